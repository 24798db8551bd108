"""Each kustomize overlay renders, validates against the Kubernetes schemas offline, and is coherent:
probes, resources, GPU limits, Services that select Deployments, ports equal to the services' defaults,
references that resolve, and env that the services' own loaders accept."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from services.common import ports
from tests.deploy.manifests import (
    OVERLAYS,
    by_kind,
    check_service_env,
    container_env,
    module_of,
    render_overlay,
)

K8S_VERSION = "1.33.0"
MODEL_SERVICES = ("encoder", "llm", "decoder-image", "decoder-video", "decoder-audio")
DEFAULT_PORTS = {
    "encoder": ports.ENCODER,
    "llm": ports.LLM,
    **{f"decoder-{m}": p for m, p in ports.DECODERS.items()},
    "redis": ports.REDIS,
}
METRICS_PORTS = {
    "encoder": ports.ENCODER_METRICS,
    "llm": ports.LLM_METRICS,
    **{f"decoder-{m}": p for m, p in ports.DECODER_METRICS.items()},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render_overlay(request.param)


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_resource_validates_against_the_schemas(overlay):
    name, resources = overlay
    assert len(resources) > 30
    for resource in resources:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_the_overlay_has_every_part(overlay):
    _, resources = overlay
    kinds = {r["kind"] for r in resources}
    for kind in (
        "Namespace",
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    ):
        assert kind in kinds
    assert set(by_kind(resources, "Deployment")) == {*MODEL_SERVICES, "gateway", "redis"}
    assert (
        "NEXTGPT_GATEWAY_API_KEYS" in by_kind(resources, "Secret")["nextgpt-gateway-api-keys"]["stringData"]
    )
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {"nextgpt"}


def test_deployments_have_probes_resources_and_drain(overlay):
    name, resources = overlay
    for dep_name, dep in by_kind(resources, "Deployment").items():
        pod = _pod(dep)
        assert pod["securityContext"]["runAsNonRoot"] is True or dep_name == "redis"
        for c in pod["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{name}/{dep_name}: no {probe}"
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), f"{name}/{dep_name}"
            assert "memory" in c["resources"]["limits"], f"{name}/{dep_name}"
        for c in pod.get("initContainers", []):
            assert "memory" in c["resources"]["limits"]
        if dep_name == "redis":
            continue
        (c,) = pod["containers"]
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        settings = check_service_env(module_of(c["command"]) or "", container_env(c, resources))
        # SIGTERM comes after preStop; the service drains for grace_s; then SIGKILL
        assert pod["terminationGracePeriodSeconds"] >= sleep + settings.grace_s + 5, f"{name}/{dep_name}"


def test_model_services_use_grpc_probes_with_a_long_startup_budget(overlay):
    name, resources = overlay
    for dep_name in MODEL_SERVICES:
        (c,) = _pod(by_kind(resources, "Deployment")[dep_name])["containers"]
        port = DEFAULT_PORTS[dep_name]
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": port,
            "metrics": METRICS_PORTS[dep_name],
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port}
        budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert budget >= (600 if name == "gpu" else 120), f"{name}/{dep_name}: startup budget {budget}s"


def test_gpu_limits_only_in_the_gpu_overlay(overlay):
    name, resources = overlay
    for dep_name, dep in by_kind(resources, "Deployment").items():
        (c,) = _pod(dep)["containers"]
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        if name == "gpu" and dep_name in MODEL_SERVICES:
            assert gpus == 1, f"{dep_name} has no GPU limit"
            assert _pod(dep)["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert gpus is None, f"{name}/{dep_name} asks for a GPU"
        for image in [x["image"] for x in _pod(dep)["containers"] + _pod(dep).get("initContainers", [])]:
            if image.startswith("nextgpt/"):
                assert image.endswith(":cuda" if name == "gpu" else ":cpu"), image


def test_services_select_deployments_on_the_default_ports(overlay):
    _, resources = overlay
    deployments = by_kind(resources, "Deployment")
    for svc_name, svc in by_kind(resources, "Service").items():
        selected = [
            d
            for d in deployments.values()
            if _selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"Service {svc_name} selects {len(selected)} Deployments"
        (container,) = _pod(selected[0])["containers"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"], f"{svc_name}:{port}"
        if svc_name == "gateway":
            assert {p["port"] for p in svc["spec"]["ports"]} == {ports.GATEWAY_HTTP, ports.GATEWAY_GRPC}
        else:
            assert svc["spec"]["ports"][0]["port"] == DEFAULT_PORTS[svc_name]


def test_gateway_targets_are_the_backend_services(overlay):
    _, resources = overlay
    (c,) = _pod(by_kind(resources, "Deployment")["gateway"])["containers"]
    settings = check_service_env("gateway.server", container_env(c, resources))
    assert (settings.http_port, settings.grpc_port) == (ports.GATEWAY_HTTP, ports.GATEWAY_GRPC)
    services = by_kind(resources, "Service")
    targets = {"encoder": settings.encoder_target, "llm": settings.llm_target}
    targets |= {f"decoder-{m}": t for m, t in settings.decoder_targets().items()}
    for name, target in targets.items():
        host, port = target.split(":")
        assert host == name and host in services and int(port) == DEFAULT_PORTS[name]


def test_model_services_load_their_settings_and_profile(overlay):
    name, resources = overlay
    for dep_name in MODEL_SERVICES:
        pod = _pod(by_kind(resources, "Deployment")[dep_name])
        (c,) = pod["containers"]
        env = container_env(c, resources)
        settings = check_service_env(module_of(c["command"]) or "", env)
        assert settings.port == DEFAULT_PORTS[dep_name]
        if dep_name.startswith("decoder-"):
            assert settings.modality == dep_name.removeprefix("decoder-")
        assert env["NEXTGPT_PROFILE"] == ("nextgpt-7b-tiva-v0" if name == "gpu" else "tiny")
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts[env["NEXTGPT_MODELS_DIR"]]["readOnly"] is True
        # the init container checks the same profile the service loads
        (init,) = pod["initContainers"]
        assert init["envFrom"] == c["envFrom"] and "--weights" in init["command"][-1]


def test_references_resolve(overlay):
    name, resources = overlay
    names = {kind: set(by_kind(resources, kind)) for kind in ("ConfigMap", "Secret", "PersistentVolumeClaim")}
    pods = [_pod(d) for d in by_kind(resources, "Deployment").values()]
    pods += [j["spec"]["template"]["spec"] for j in by_kind(resources, "Job").values()]
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in names["PersistentVolumeClaim"]
        for c in pod["containers"] + pod.get("initContainers", []):
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                assert ref["name"] in names[kind]
            declared = {v["name"] for v in pod.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= declared
    deployments = by_kind(resources, "Deployment")
    for hpa in by_kind(resources, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for pdb in by_kind(resources, "PodDisruptionBudget").values():
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            _selects(labels, d["spec"]["template"]["metadata"]["labels"]) for d in deployments.values()
        )
    services = by_kind(resources, "Service")
    for ingress in by_kind(resources, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "gateway"
                assert backend["port"]["name"] in {p["name"] for p in services["gateway"]["spec"]["ports"]}


def test_hpas_scale_gpu_services_on_queue_depth(overlay):
    name, resources = overlay
    for hpa_name, hpa in by_kind(resources, "HorizontalPodAutoscaler").items():
        (metric,) = hpa["spec"]["metrics"]
        if name == "gpu" and hpa_name in MODEL_SERVICES:
            assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"].endswith("_queue_depth")
        else:
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_only_the_gateway_is_reachable_from_outside(overlay):
    _, resources = overlay
    policies = by_kind(resources, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    deployments = by_kind(resources, "Deployment")
    for dep_name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        for policy in policies.values():
            if not _selects(policy["spec"]["podSelector"].get("matchLabels", {}), labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                if not sources:  # any source
                    assert dep_name == "gateway", f"{policy['metadata']['name']} opens {dep_name}"
                    continue
                for source in sources:
                    # from a pod of this namespace, or from the monitoring namespace to metrics ports
                    if "namespaceSelector" in source:
                        rule_ports = {p["port"] for p in rule["ports"]}
                        assert rule_ports.isdisjoint({*DEFAULT_PORTS.values(), ports.GATEWAY_GRPC})
                    else:
                        assert "podSelector" in source
