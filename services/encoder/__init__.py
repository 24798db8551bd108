"""The ImageBind encoder service: `python -m services.encoder.server` (see `server.py`)."""
