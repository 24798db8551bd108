"""Backends bind loopback by default (the local cluster); every container file sets 0.0.0.0 explicitly,
or other containers, Prometheus and Kubernetes' `grpc:` probes (which dial the pod IP) find nothing."""

from __future__ import annotations

import pytest

from services.decoders.config import DecoderServiceSettings
from services.encoder.config import EncoderServiceSettings
from services.llm.config import LLMServiceSettings
from tests.deploy.manifests import (
    OVERLAYS,
    by_kind,
    check_service_env,
    compose_env,
    container_env,
    load_compose,
    module_of,
    render_overlay,
)

MODEL_SERVICES = ("encoder", "llm", "decoder-image", "decoder-video", "decoder-audio")
MODULES = {"encoder": "services.encoder.server", "llm": "services.llm.server"}


def _module(name: str) -> str:
    return MODULES.get(name, "services.decoders.server")


def test_services_default_to_loopback():
    for settings in (EncoderServiceSettings(), LLMServiceSettings(), DecoderServiceSettings("image")):
        assert settings.host == "127.0.0.1", type(settings).__name__


@pytest.mark.parametrize(
    "files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.tiny.yml")], ids=["gpu", "tiny"]
)
def test_compose_binds_every_backend_for_other_containers(files):
    services = load_compose(*files)["services"]
    for name in MODEL_SERVICES:
        assert check_service_env(_module(name), compose_env(services[name])).host == "0.0.0.0", name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_binds_every_backend_for_probes_and_other_pods(overlay):
    resources = render_overlay(overlay)
    deployments = by_kind(resources, "Deployment")
    for name in MODEL_SERVICES:
        [container] = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert module_of(container["command"]) == _module(name)
        settings = check_service_env(_module(name), container_env(container, resources))
        assert settings.host == "0.0.0.0", f"{overlay}: {name}"
