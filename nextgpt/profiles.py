"""Built-in profiles and how a profile is chosen and overridden.

A profile is resolved in three layers, later ones winning:
1. a built-in profile by name (`tiny`, `shapes`, `nextgpt-7b-tiva-v0`), its paths under the models directory
   (`--models-dir`, env `NEXTGPT_MODELS_DIR`, default `./models`);
2. a YAML or TOML file (`--config FILE`, env `NEXTGPT_CONFIG`) holding `profile: NAME` plus any nested
   fields to change, e.g. `llm: {placement: {device: cuda, dtype: float16}}`;
3. environment variables `NEXTGPT__<SECTION>__<FIELD>=value` with `__` between levels, e.g.
   `NEXTGPT__DECODERS__VIDEO__OFFLOAD=true`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml

from nextgpt import tiny_profile as dims
from nextgpt.config import (
    DecodeDefaults,
    DecoderConfig,
    EncoderConfig,
    InputProjectorConfig,
    LLMConfig,
    LoRAConfig,
    OutputProjectorConfig,
    Placement,
    ProfileConfig,
)
from nextgpt.errors import ConfigError
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, Modality

DEFAULT_PROFILE = "tiny"
ENV_PREFIX = "NEXTGPT__"


def default_models_dir() -> Path:
    return Path(os.environ.get("NEXTGPT_MODELS_DIR", "models"))


def _projector_shape(modality: Modality) -> dict[str, Any]:
    """What every profile's output projector of `modality` shares: its span length and conditioning."""
    out = OUTPUTS[modality]
    return {
        "num_signal_tokens": out.num_signal_tokens,
        "num_queries": out.projector_queries,
        "normalize": out.projector_normalize,
    }


def _tiny(root: Path) -> dict[str, Any]:
    base = root / "tiny"
    decode = {"steps": dims.DIFFUSION_STEPS, "guidance_scale": 7.5}
    return {
        "name": "tiny",
        "description": "random weights at tiny widths, built locally by `nextgpt init-tiny`; runs on CPU",
        "encoder": {
            "checkpoint": base / "imagebind" / "imagebind_tiny.pth",
            "arch": "tiny",
            "embed_dim": dims.ENCODER_EMBED,
            "model_id": "imagebind-tiny-seed0",
        },
        "llm": {
            "base_dir": base / "vicuna",
            "lora": {"r": dims.LORA_R, "alpha": dims.LORA_ALPHA, "dropout": 0.1},
        },
        "input_projector": {"kind": "linear", "in_dim": dims.ENCODER_EMBED, "out_dim": dims.LLM_HIDDEN},
        "output_projectors": {
            m: {
                **_projector_shape(m),
                "in_dim": dims.LLM_HIDDEN,
                "d_model": dims.PROJ_D_MODEL,
                "nhead": dims.PROJ_HEADS,
                "num_encoder_layers": dims.PROJ_LAYERS,
                "num_decoder_layers": dims.PROJ_LAYERS,
                "dim_feedforward": dims.PROJ_FF,
                "out_dim": d,
            }
            for m, d in zip(
                MODALITIES, (dims.IMAGE_COND_DIM, dims.VIDEO_COND_DIM, dims.AUDIO_COND_DIM), strict=True
            )
        },
        "decoders": {
            "image": {
                "pipeline_dir": base / "stable-diffusion",
                "defaults": {**decode, "height": dims.IMAGE_SIZE, "width": dims.IMAGE_SIZE},
            },
            "video": {
                "pipeline_dir": base / "zeroscope",
                "defaults": {
                    **decode,
                    "height": dims.VIDEO_SIZE,
                    "width": dims.VIDEO_SIZE,
                    "num_frames": dims.VIDEO_FRAMES,
                },
            },
            "audio": {
                "pipeline_dir": base / "audioldm",
                "defaults": {**decode, "audio_seconds": dims.AUDIO_SECONDS},
            },
        },
        "delta_checkpoint": base / "nextgpt" / "pytorch_model.pt",
    }


SHAPES_MANIFEST = "manifest.json"
"""Written by `make train-world` into models/shapes/: under "profile", what the trained components settled
(decode defaults, conditioning widths, the encoder's identity, the LoRA shape), merged over `_shapes`;
under "built", how they were built (seed, sizes)."""


def shapes_built(models_dir: Path | None = None) -> dict[str, Any]:
    """How the installed `shapes` profile was built (its manifest's "built": seed, parts), or {} when no
    build wrote one. `nextgpt eval-world` reads the seed: the held-out combinations depend on it."""
    manifest = (models_dir or default_models_dir()) / "shapes" / SHAPES_MANIFEST
    return dict(json.loads(manifest.read_text()).get("built", {})) if manifest.is_file() else {}


def _shapes(root: Path) -> dict[str, Any]:
    """Every component trained on the shapes world by `make train-world` (`nextgpt.training.world_build`),
    the LLM a small Llama chat-tuned on it (`foundation.llm_base.WORLD_LLM`, the tiny tokenizer). The
    paths are fixed; the rest (widths, decode defaults, LoRA) comes from the build's manifest when
    present."""
    base = root / "shapes"
    raw = _tiny(root)
    raw.update(
        name="shapes",
        description="every component trained on the synthetic shapes world (`make train-world`); CPU",
        delta_checkpoint=base / "nextgpt" / "pytorch_model.pt",
    )
    raw["encoder"].update(checkpoint=base / "imagebind" / "imagebind_shapes.pth", arch="shapes", embed_dim=64)
    raw["encoder"]["model_id"] = "imagebind-shapes"
    raw["input_projector"]["in_dim"] = 64
    raw["llm"]["base_dir"] = base / "vicuna"
    for modality, folder in (("image", "stable-diffusion"), ("video", "zeroscope"), ("audio", "audioldm")):
        raw["decoders"][modality]["pipeline_dir"] = base / folder
    manifest = base / SHAPES_MANIFEST
    if manifest.is_file():
        merge_into(raw, json.loads(manifest.read_text()).get("profile", {}))
    return raw


def _tiva_v0(root: Path) -> dict[str, Any]:
    base = root / "nextgpt-7b-tiva-v0"
    return {
        "name": "nextgpt-7b-tiva-v0",
        "description": "the released NExT-GPT 7B checkpoint on Vicuna-7B v0, ImageBind-huge, SD 1.5, "
        "Zeroscope v2 576w, AudioLDM-l-full",
        "encoder": {"checkpoint": base / "imagebind" / "imagebind_huge.pth", "arch": "huge"},
        "llm": {"base_dir": base / "vicuna-7b-v0", "lora": {"r": 32, "alpha": 32, "dropout": 0.1}},
        "input_projector": {"kind": "linear", "in_dim": 1024, "out_dim": 4096},
        "output_projectors": {
            m: {**_projector_shape(m), "out_dim": d}
            for m, d in zip(MODALITIES, (768, 1024, 512), strict=True)
        },
        "decoders": {
            "image": {"pipeline_dir": base / "stable-diffusion-v1-5"},
            "video": {
                "pipeline_dir": base / "zeroscope_v2_576w",
                "defaults": {"height": 320, "width": 576, "num_frames": 24, "fps": 8},
            },
            "audio": {"pipeline_dir": base / "audioldm-l-full", "defaults": {"audio_seconds": 9.0}},
        },
        "delta_checkpoint": base / "nextgpt_7b_tiva_v0" / "pytorch_model.pt",
    }


BUILTIN_PROFILES = {"tiny": _tiny, "shapes": _shapes, "nextgpt-7b-tiva-v0": _tiva_v0}


def profile_names() -> list[str]:
    return list(BUILTIN_PROFILES)


def load_profile(
    name: str | None = None,
    *,
    config_file: str | Path | None = None,
    models_dir: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> ProfileConfig:
    """Resolve a profile: built-in by name, then the config file, then `NEXTGPT__...` variables."""
    env = dict(os.environ) if env is None else env
    config_file = config_file or env.get("NEXTGPT_CONFIG") or None
    overrides = _read_config_file(Path(config_file)) if config_file else {}
    name = name or overrides.pop("profile", None) or env.get("NEXTGPT_PROFILE") or DEFAULT_PROFILE
    overrides.pop("profile", None)
    if name not in BUILTIN_PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {profile_names()}")
    root = Path(models_dir or env.get("NEXTGPT_MODELS_DIR") or default_models_dir())
    raw = BUILTIN_PROFILES[name](root)
    merge_into(raw, overrides)
    merge_into(raw, _env_overrides(env))
    return build_profile(raw)


def build_profile(raw: dict[str, Any]) -> ProfileConfig:
    """Turn a nested dict (as in a YAML file) into a validated `ProfileConfig`."""
    try:
        return _from_dict(ProfileConfig, raw)
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"bad profile configuration: {exc}") from exc


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    """`NEXTGPT__LLM__PLACEMENT__DEVICE=cuda` -> {"llm": {"placement": {"device": "cuda"}}}."""
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_scalar(value)
    return out


def _parse_scalar(value: str) -> Any:
    """Env values are YAML scalars: `true`, `3`, `0.5`, `[a, b]`, `null`, or plain strings."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def merge_into(target: dict[str, Any], updates: dict[str, Any]) -> None:
    """Nested dicts merged key by key, anything else replaced (a copy): how every layer of a profile
    applies."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _from_dict(cls: type, data: Any) -> Any:
    """Build a (nested) dataclass from plain data, rejecting unknown fields by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} expects a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {key: _convert(hints[key], value) for key, value in data.items()}
    return cls(**kwargs)


_NESTED = {
    EncoderConfig,
    LLMConfig,
    LoRAConfig,
    InputProjectorConfig,
    OutputProjectorConfig,
    DecoderConfig,
    DecodeDefaults,
    Placement,
}


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in _NESTED:
        return _from_dict(hint, value)
    if origin is dict and args and args[1] in _NESTED:
        return {k: _from_dict(args[1], v) for k, v in value.items()}
    for arg in args:  # X | None
        if arg in _NESTED:
            return _from_dict(arg, value)
    return value


def describe(profile: ProfileConfig) -> str:
    return json.dumps(profile.to_dict(), indent=2)
