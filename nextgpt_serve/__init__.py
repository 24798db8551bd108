"""The user-facing layer over the core (`nextgpt`) and the cluster (`services`, `gateway`): the `nextgpt`
command line, the demo and the Python client of the gateway's gRPC API.

Layers, each importing only those below it: `nextgpt` (model code, no gRPC) <- `services` (backend
processes) <- `gateway` (the public APIs) <- `nextgpt_serve` (CLI, demo, client). See docs/architecture.md.
"""
