"""Decoder services, one process per modality: `python -m services.decoders.server --modality image`.

`core.DecoderCore` (output projector + diffusion decoder behind a micro-batcher), `servicer` (the thin
gRPC adapter), `config` (settings from flags and `NEXTGPT_DECODER_*`), `server` (the entrypoint).
"""
