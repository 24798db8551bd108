"""NExT-GPT: any-to-any multimodal LLM (ImageBind -> Vicuna+LoRA -> diffusion decoders).

The core package is plain Python and torch: it knows nothing of gRPC or HTTP. Services and the gateway
are thin adapters around it.
"""

__version__ = "0.1.0"
