"""Offline readers of the deployment files: rendered kustomize overlays, merged compose files, the
Dockerfile's stages, and the check that the env a manifest gives a service is accepted by that
service's own settings loader (and, for the model services, by the profile loader).

Rendering uses real kustomize (`kubectl kustomize`, kustomize v5 built into kubectl, which the machine
image ships). Compose has no CLI here, so `load_compose` implements the part of the compose spec our
files use: YAML anchors and merge keys, `${VAR:-default}` interpolation, and override merging (mappings
merged recursively, `volumes` by container path, `ports` appended, `!reset` / `!override` tags).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ENV_PREFIX as GATEWAY_PREFIX
from gateway.config import GatewaySettings
from nextgpt.profiles import load_profile
from services.common.settings import load_settings
from services.decoders.config import ENV_PREFIX as DECODER_PREFIX
from services.decoders.config import DecoderServiceSettings
from services.encoder.config import ENV_PREFIX as ENCODER_PREFIX
from services.encoder.config import EncoderServiceSettings
from services.llm.config import ENV_PREFIX as LLM_PREFIX
from services.llm.config import LLMServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu-tiny")
DOCKERFILE = ROOT / "docker" / "Dockerfile"

# python -m MODULE -> (service kind, settings class, env prefix)
SERVICES: dict[str, tuple[str, type, str]] = {
    "services.encoder.server": ("encoder", EncoderServiceSettings, ENCODER_PREFIX),
    "services.llm.server": ("llm", LLMServiceSettings, LLM_PREFIX),
    "services.decoders.server": ("decoder", DecoderServiceSettings, DECODER_PREFIX),
    "gateway.server": ("gateway", GatewaySettings, GATEWAY_PREFIX),
}
ALL_PREFIXES = [prefix for _, _, prefix in SERVICES.values()]


# ---------------------------------------------------------------------------------------- kustomize
def render_overlay(name: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s/overlays/NAME` as a list of resources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl (kustomize) is missing; the machine image ships it")
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def container_env(container: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps/Secrets first, then `env` entries."""
    maps = by_kind(resources, "ConfigMap")
    secrets = by_kind(resources, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]].get("stringData", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = maps[ref["name"]]["data"][ref["key"]]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


# ---------------------------------------------------------------------------------------- Dockerfile
@dataclass
class Stage:
    name: str
    base: str
    entrypoint: list[str] | None
    healthcheck: str | None


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name with their own ENTRYPOINT / HEALTHCHECK (joined continuation lines)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I):
            current = Stage(match[2], match[1], None, None)
            parent = stages.get(match[1])
            if parent:  # ENTRYPOINT and HEALTHCHECK are inherited from a parent stage
                current.entrypoint, current.healthcheck = parent.entrypoint, parent.healthcheck
            stages[current.name] = current
        elif current and line.startswith("ENTRYPOINT"):
            current.entrypoint = json.loads(line.split(None, 1)[1])
        elif current and line.startswith("HEALTHCHECK"):
            current.healthcheck = line
    return stages


def module_of(command: list[str]) -> str | None:
    """`python -m MODULE ...` -> MODULE."""
    if len(command) >= 3 and command[0] == "python" and command[1] == "-m":
        return command[2]
    return None


# ---------------------------------------------------------------------------------------- compose
class Reset:
    """`!reset`: remove the key from the merged result."""


@dataclass
class Override:
    """`!override VALUE`: replace instead of merge."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`${VAR:-default}` / `${VAR}` in every string, as compose does (unset and no default: empty)."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m[1]) or (m[2] or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, Override):
        return Override(interpolate(value.value, env))
    return value


def _volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    return str(entry).split(":")[1]


def _merge(base: Any, over: Any, key: str = "") -> Any:
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for k, v in over.items():
            if isinstance(v, Reset):
                merged.pop(k, None)
            elif k in merged:
                merged[k] = _merge(merged[k], v, k)
            else:
                merged[k] = v.value if isinstance(v, Override) else v
        return merged
    if key == "volumes" and isinstance(base, list) and isinstance(over, list):
        by_target = {_volume_target(v): v for v in base}
        by_target.update({_volume_target(v): v for v in over})
        return list(by_target.values())
    if key == "ports" and isinstance(base, list) and isinstance(over, list):
        return base + [p for p in over if p not in base]
    return over


def load_compose(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated model of `docker compose -f FILE ...` (files relative to the repo root)."""
    merged: dict[str, Any] = {}
    for name in files:
        data = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506 (SafeLoader subclass)
        data = {k: v for k, v in data.items() if not k.startswith("x-")}
        merged = _merge(merged, interpolate(data, env or {}))  # compose interpolates each file first
    return merged


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


# ---------------------------------------------------------------------------------------- settings
def check_service_env(module: str, env: dict[str, str], argv: list[str] | None = None) -> Any:
    """Load the service's settings exactly as its entrypoint does, and the profile for model services.

    Also rejects what the loaders would silently ignore: a `NEXTGPT_<SERVICE>_*` name that is no field of
    that service (a typo), or another service's prefix (a setting given to the wrong process).
    """
    kind, cls, prefix = SERVICES[module]
    fields = {f.upper() for f in cls.__dataclass_fields__}
    for name in env:
        if name.startswith(prefix):
            assert name[len(prefix) :] in fields, f"{kind}: {name} is no setting of {cls.__name__}"
        else:
            others = [p for p in ALL_PREFIXES if p != prefix and name.startswith(p)]
            assert not others, f"{kind}: {name} belongs to another service"
    settings = load_settings(cls, prefix, argv or [], env)
    if kind != "gateway":
        load_profile(
            settings.profile, config_file=settings.config_file, models_dir=settings.models_dir, env=env
        )
    return settings
