"""Default ports of the local cluster (all overridable by flags and env vars; documented in README).
The decoders' ports are in the modality table (`nextgpt.modalities`)."""

from nextgpt.modalities import OUTPUTS

GATEWAY_HTTP = 8000
GATEWAY_GRPC = 50051
ENCODER = 50061
LLM = 50062
DECODERS: dict[str, int] = {m: out.decoder_port for m, out in OUTPUTS.items()}
REDIS = 6379

# Prometheus /metrics of the gRPC services (the gateway serves /metrics on its HTTP port).
ENCODER_METRICS = 9161
LLM_METRICS = 9162
DECODER_METRICS: dict[str, int] = {m: out.decoder_metrics_port for m, out in OUTPUTS.items()}
