"""Trained weights out: our own format, and the released legacy layout the pipeline and services load.

Own format (`<run>/final/`):
    model.safetensors   projectors, LoRA and only the *new* token rows (small; base rows stay in the base)
    config.json         format version, stage, profile, base vocab, signal layout, LoRA shape, steps
    adapter/            the LoRA as a PEFT adapter directory (for `services.llm --adapters-dir`)

Legacy layout (`<run>/pytorch_model.pt`, design 1.5): the flat delta `nextgpt.checkpoint.save_delta`
writes; `load_delta` / `NextGPT.from_profile` read it. A trained checkpoint is selected at inference by
pointing the profile's `delta_checkpoint` at it (`NEXTGPT__DELTA_CHECKPOINT=<run>/pytorch_model.pt`, or
`delta_checkpoint:` in a `--config` file), which every service already honours.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from nextgpt.checkpoint import save_delta
from nextgpt.config import LoRAConfig, ProfileConfig
from nextgpt.errors import CheckpointError
from nextgpt.llm.weights import export_peft_adapter
from nextgpt.training.model import TrainableNextGPT

logger = logging.getLogger(__name__)

FORMAT = "nextgpt-train"
VERSION = 1


def save_run(model: TrainableNextGPT, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Write the own format into `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.trainable_state(), str(out_dir / "model.safetensors"))
    lora = model.llm.peft_config["default"]
    config = {
        "format": FORMAT,
        "version": VERSION,
        "profile": model.profile.name,
        "base_vocab": model.base_vocab,
        "signal_layout": model.profile.llm.signal_layout,
        "lora": {
            "r": lora.r,
            "alpha": lora.lora_alpha,
            "dropout": lora.lora_dropout,
            "target_modules": sorted(lora.target_modules),
        },
        **meta,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    export_peft_adapter(model.llm, out_dir / "adapter")
    return out_dir


def load_run(run_dir: Path, profile: ProfileConfig, device: str = "cpu") -> TrainableNextGPT:
    """Rebuild the trained model from the own format on the profile's base models."""
    run_dir = Path(run_dir)
    if (run_dir / "final" / "config.json").is_file():
        run_dir = run_dir / "final"
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} holds no {FORMAT} checkpoint (config.json missing)")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    if config["signal_layout"] != profile.llm.signal_layout:
        raise CheckpointError(
            f"{run_dir} was trained with the {config['signal_layout']} signal layout, the profile uses "
            f"{profile.llm.signal_layout}"
        )
    lora = LoRAConfig(**{**config["lora"], "target_modules": tuple(config["lora"]["target_modules"])})
    model = TrainableNextGPT.build(profile, init=None, lora=lora, seed=0, device=device)
    if model.base_vocab != config["base_vocab"]:
        raise CheckpointError(
            f"{run_dir} was trained on a {config['base_vocab']}-token base, the profile's base has "
            f"{model.base_vocab}: use the same base model"
        )
    model.load_trainable_state(load_file(str(run_dir / "model.safetensors")))
    return model


def export_legacy(model: TrainableNextGPT, path: Path) -> Path:
    """Write the released-layout `pytorch_model.pt` of the model's current weights."""
    path = save_delta(model.to_delta(), Path(path))
    logger.info("exported legacy delta %s", path)
    return path
