"""The NExT-GPT gateway: public gRPC `nextgpt.v1.NextGPT` and OpenAI-compatible REST over the backend
services (encoder, LLM, one decoder per modality). Run it with `python -m gateway.server`."""
