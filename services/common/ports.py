"""Default ports of the local cluster (all overridable by flags and env vars; documented in README)."""

GATEWAY_HTTP = 8000
GATEWAY_GRPC = 50051
ENCODER = 50061
LLM = 50062
DECODERS = {"image": 50063, "video": 50064, "audio": 50065}
REDIS = 6379

# Prometheus /metrics of the gRPC services (the gateway serves /metrics on its HTTP port).
ENCODER_METRICS = 9161
LLM_METRICS = 9162
DECODER_METRICS = {"image": 9163, "video": 9164, "audio": 9165}
