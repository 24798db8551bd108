"""LoRA adapters by name: "default" is the delta checkpoint's LoRA; every PEFT adapter directory under
`adapters_dir` (adapter_config.json + adapter_model.safetensors, as `export_peft_adapter` writes them) is
another, named after its directory.

Every extra adapter is checked against the loaded base before peft sees it, so a wrong rank, target or
shape stops the service at start with a message naming the adapter and the problem (peft itself would
only warn about missing keys). The HF engine switches adapters with peft's `set_adapter` between batches
(a batch holds requests of one adapter), so the switch never races a forward pass.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from peft import PeftModel
from safetensors import safe_open
from torch import nn

from nextgpt.errors import CheckpointError, ConfigError, InvalidInput

logger = logging.getLogger(__name__)

DEFAULT_ADAPTER = "default"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_KEY_RE = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
# PEFT features that change which tensors exist or how they combine; refused rather than half-checked.
_UNSUPPORTED = (
    "use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform",
    "target_parameters", "trainable_token_indices",
)  # fmt: skip


class AdapterSet:
    """The adapters one model can use, by name; the first is the default."""

    def __init__(self, model: Any, names: list[str]) -> None:
        self.model = model
        self.names = names
        self.active = DEFAULT_ADAPTER

    @classmethod
    def load(cls, model: Any, adapters_dir: Path | None) -> AdapterSet:
        """Validate and load every adapter directory under `adapters_dir` into `model` (a PeftModel
        holding the checkpoint's LoRA as "default")."""
        found = discover(adapters_dir) if adapters_dir is not None else {}
        if found and not isinstance(model, PeftModel):
            raise ConfigError(
                f"adapters_dir {adapters_dir} holds adapters {sorted(found)} but the delta checkpoint has no "
                "LoRA to run beside them; use a checkpoint with LoRA or leave adapters_dir unset"
            )
        for name, path in found.items():
            validate(name, path, model)
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            logger.info("loaded LoRA adapter %s from %s", name, path)
        if isinstance(model, PeftModel):
            model.set_adapter(DEFAULT_ADAPTER)
        return cls(model, [DEFAULT_ADAPTER, *found])

    def resolve(self, name: str | None) -> str:
        """The adapter a request asked for; empty/None means the default."""
        if not name:
            return DEFAULT_ADAPTER
        if name not in self.names:
            raise InvalidInput(f"unknown LoRA adapter {name!r}; available: {', '.join(self.names)}")
        return name

    def activate(self, name: str) -> None:
        """Make `name` the adapter of the next forward passes (call under the engine's lock)."""
        if name != self.active and isinstance(self.model, PeftModel):
            self.model.set_adapter(name)
            self.active = name


def discover(adapters_dir: Path) -> dict[str, Path]:
    """Adapter directories by name, sorted; every subdirectory must be an adapter."""
    adapters_dir = Path(adapters_dir)
    if not adapters_dir.is_dir():
        raise ConfigError(f"adapters_dir {adapters_dir} is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(p for p in adapters_dir.iterdir() if p.is_dir()):
        name = path.name
        if name == DEFAULT_ADAPTER:
            raise ConfigError(
                f"adapter directory {path} is named {DEFAULT_ADAPTER!r}, which is the checkpoint's LoRA; "
                "rename the directory"
            )
        if not _NAME_RE.match(name):
            raise ConfigError(f"adapter directory name {name!r} is not usable as a name; use [A-Za-z0-9_-]")
        found[name] = path
    return found


def validate(name: str, path: Path, model: Any) -> None:
    """Raise CheckpointError listing every way the adapter at `path` does not fit `model`'s base."""
    prefix = f"LoRA adapter {name!r} at {path}"
    config = _read_config(prefix, path)
    problems: list[str] = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    problems += [f"{key}={config[key]!r} is not supported" for key in _UNSUPPORTED if config.get(key)]
    r, targets = config.get("r"), config.get("target_modules")
    if not isinstance(r, int) or r <= 0:
        problems.append(f"rank r={r!r} must be a positive integer")
    if not isinstance(targets, list) or not targets:
        problems.append(f"target_modules={targets!r} must be a non-empty list of module names")
        targets = []
    if problems:
        raise CheckpointError(f"{prefix}: " + "; ".join(problems))
    linears = _base_linears(model)
    expected = {n for n in linears if n.rsplit(".", 1)[-1] in targets}
    unknown = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n in linears})
    if unknown:
        problems.append(f"target_modules {unknown} name no linear layer of the base model")
    seen: dict[str, set[str]] = {}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            m = _KEY_RE.match(key)
            if m is None or m.group(1) not in linears:
                problems.append(f"tensor {key} belongs to no LoRA layer of the base model")
                continue
            module, side = m.groups()
            if module not in expected:
                problems.append(f"tensor {key} is on {module}, which is not in target_modules {targets}")
            seen.setdefault(module, set()).add(side)
            layer = linears[module]
            want = (r, layer.in_features) if side == "A" else (layer.out_features, r)
            shape = tuple(f.get_slice(key).get_shape())
            if shape != want:
                problems.append(f"tensor {key} has shape {list(shape)}, expected {list(want)} (r={r})")
    missing = sorted(f"{m}.lora_{s}" for m in expected for s in "AB" if s not in seen.get(m, set()))
    if missing:
        more = f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
        problems.append(f"{len(missing)} LoRA tensor(s) missing: {', '.join(missing[:4])}{more}")
    if problems:
        raise CheckpointError(f"{prefix} does not fit the base model: " + "; ".join(problems[:8]))


def _read_config(prefix: str, path: Path) -> dict[str, Any]:
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / file).is_file():
            raise CheckpointError(
                f"{prefix} has no {file}; an adapter directory holds {CONFIG_FILE} + {WEIGHTS_FILE} "
                "(as written by `NextGPTLanguageModel.export_peft_adapter` or peft's save_pretrained)"
            )
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except ValueError as exc:
        raise CheckpointError(f"{prefix}: {CONFIG_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{prefix}: {CONFIG_FILE} must hold a JSON object")
    return config


def _base_linears(model: Any) -> dict[str, nn.Linear]:
    """The base model's linear layers by module name (peft's wrappers seen through to their base_layer)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    found: dict[str, nn.Linear] = {}
    for name, module in base.named_modules():
        if ".lora_" in name or not isinstance(module, nn.Linear):
            continue
        found[name.removesuffix(".base_layer")] = module
    return found
