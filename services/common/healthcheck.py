"""Container probes: `python -m services.common.healthcheck TARGET` exits 0 when TARGET is SERVING.

TARGET is `host:port`, or a service name (`encoder`, `llm`, `decoder`, `gateway`) whose gRPC port is read
from that service's own settings (flags are not there, so env vars and defaults), exactly as the
service reads them: a Docker HEALTHCHECK needs no port of its own. `--weights` instead checks that
every file of the configured profile is present (the init container that waits for the staging Job).
Kubernetes uses its native `grpc:` probes; this module is for Docker, compose and init containers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nextgpt.errors import ConfigError
from services.common import ports
from services.common.settings import load_settings

GATEWAY_GRPC_PORT_ENV = "NEXTGPT_GATEWAY_GRPC_PORT"
"""The gateway's `grpc_port` setting as an env var (tests/deploy checks it matches `GatewaySettings`)."""


def service_port(name: str, env: dict[str, str] | None = None) -> int:
    """The gRPC port `name` listens on, resolved by that service's settings loader."""
    if name == "encoder":
        from services.encoder.config import ENV_PREFIX, EncoderServiceSettings

        return load_settings(EncoderServiceSettings, ENV_PREFIX, [], env).port
    if name == "llm":
        from services.llm.config import ENV_PREFIX as LLM_PREFIX
        from services.llm.config import LLMServiceSettings

        return load_settings(LLMServiceSettings, LLM_PREFIX, [], env).port
    if name == "decoder":
        from services.decoders.config import ENV_PREFIX as DEC_PREFIX
        from services.decoders.config import DecoderServiceSettings

        return int(load_settings(DecoderServiceSettings, DEC_PREFIX, [], env).port or 0)
    if name == "gateway":  # the layer above the services: its one setting read here, as it reads it
        value = (os.environ if env is None else env).get(GATEWAY_GRPC_PORT_ENV, "")
        return int(value) if value.strip() else ports.GATEWAY_GRPC
    raise ConfigError(f"unknown service {name!r}: use host:port or encoder|llm|decoder|gateway")


def check_serving(target: str, timeout_s: float, service: str = "") -> str:
    """The health status name of `target` (SERVING, NOT_SERVING, ...) or UNAVAILABLE."""
    try:
        with grpc.insecure_channel(target) as channel:
            # typeshed's HealthStub declares no methods (the generated class sets them in __init__).
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def missing_weights() -> dict[str, str]:
    """Files of the profile chosen by NEXTGPT_PROFILE / NEXTGPT_MODELS_DIR / ... that are absent."""
    from nextgpt.profiles import load_profile

    return {name: str(path) for name, path in load_profile().missing_paths().items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("target", nargs="?", default="", help="host:port or encoder|llm|decoder|gateway")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline of the Check call, seconds")
    parser.add_argument("--weights", action="store_true", help="check the profile's files instead")
    args = parser.parse_args(argv)
    try:
        if args.weights:
            missing = missing_weights()
            for name, path in missing.items():
                print(f"missing {name}: {path}", file=sys.stderr)
            return 1 if missing else 0
        if not args.target:
            parser.error("give a TARGET or --weights")
        target = args.target
        if ":" not in target:
            target = f"127.0.0.1:{service_port(target)}"
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    status = check_serving(target, args.timeout)
    print(f"{target} {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
