"""CUDA checks: every component on a GPU in fp32/fp16/bf16, the three stages under autocast, torchrun.

Marked `gpu`: `make test` skips them (CI has no GPU). Run on a CUDA machine with `make test-gpu`
(`pytest -m gpu tests/gpu`). The tiny profile is random, so these check placement, dtypes, finite
numbers and learning, not quality.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nextgpt.config import GenerationOptions, Placement, ProfileConfig
from nextgpt.training.runner import Runner, read_metrics
from nextgpt.types import MediaItem, Message
from tests.nextgpt.samples import sample_audio, sample_image
from tests.nextgpt.training.train_helpers import small_world, stage_config, straight_and_resumed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parents[2]


def on_cuda(profile: ProfileConfig, dtype: str) -> ProfileConfig:
    """The profile with every component (encoder, LLM, projectors, decoders) on cuda in `dtype`."""
    place = Placement("cuda", dtype)
    return dataclasses.replace(
        profile,
        encoder=dataclasses.replace(profile.encoder, placement=place),
        llm=dataclasses.replace(profile.llm, placement=place),
        projector_placement=place,
        decoders={m: dataclasses.replace(d, placement=place) for m, d in profile.decoders.items()},
    )


def _inputs() -> list[MediaItem]:
    return [sample_image(), sample_audio()]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_pipeline_any_to_any_on_cuda(tiny_profile: ProfileConfig, dtype: str) -> None:
    from nextgpt.pipeline import NextGPT

    model = NextGPT.from_profile(on_cuda(tiny_profile, dtype))
    assert next(model.llm.model.parameters()).device.type == "cuda"
    message = Message("user", "Describe these and answer with every medium.", _inputs())
    options = GenerationOptions(seed=1, max_new_tokens=48, modalities=("text", "image", "video", "audio"))
    result = model.generate([message], options)
    assert not result.errors, result.errors
    assert sorted(m.modality for m in result.media) == ["audio", "image", "video"]
    assert all(item.data for item in result.media)
    again = model.generate([message], options)
    assert [m.data for m in again.media] == [m.data for m in result.media]  # seeded on the GPU too


def test_encoder_on_cuda_matches_cpu(tiny_profile: ProfileConfig) -> None:
    from nextgpt.encoders.imagebind import ImageBindEncoder

    items = _inputs()
    cpu = ImageBindEncoder.load(tiny_profile.encoder)
    gpu = ImageBindEncoder.load(on_cuda(tiny_profile, "float32").encoder)
    for item in items:
        want, got = cpu.encode(item), gpu.encode(item).cpu()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_stages_learn_under_autocast(
    precision: str,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    tiny_models_dir: Path,
    tiny_profile,
) -> None:
    world = small_world(tmp_path_factory)
    settings = {
        "encoder": {"max_steps": 40, "lr": 5e-2, "max_examples": 48},
        "decoder": {"max_steps": 60, "lr": 1e-2},
        "instruct": {"max_steps": 60, "lr": 5e-3},
    }
    for stage, overrides in settings.items():
        cfg = stage_config(
            stage, world, tmp_path, tiny_models_dir, device="cuda", precision=precision, **overrides
        )
        runner = Runner(cfg, profile=tiny_profile, progress=False)
        assert runner.autocast == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        runner.run()
        trainable = [p for p in runner.model.parameters() if p.requires_grad]
        assert trainable and all(p.dtype == torch.float32 and p.is_cuda for p in trainable)  # fp32 master
        records = read_metrics(cfg.output_dir / "metrics.jsonl")
        assert all(np.isfinite(r["loss"]) for r in records), stage
        key = {"encoder": "ce", "decoder": "align", "instruct": "loss"}[stage]
        first = np.mean([r[key] for r in records[:5]])
        last = np.mean([r[key] for r in records[-5:]])
        assert last < first, (stage, precision, first, last)
    # the GPU-trained delta loads into the pipeline on CPU
    from nextgpt.pipeline import NextGPT

    cpu_profile = dataclasses.replace(
        tiny_profile, delta_checkpoint=tmp_path / "instruct" / "pytorch_model.pt"
    )
    model = NextGPT.from_profile(cpu_profile, decoders=("image",))
    options = GenerationOptions(seed=0, max_new_tokens=8, modalities=("text", "image"))
    assert model.generate([Message("user", "Show me a picture of a red star.")], options).media


def test_resume_on_cuda_equals_uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny_models_dir: Path, tiny_profile
) -> None:
    world = small_world(tmp_path_factory)
    common = {
        "max_steps": 6,
        "lr": 5e-3,
        "batch_size": 4,
        "max_examples": 24,
        "device": "cuda",
        "precision": "fp32",
    }
    want, got = straight_and_resumed(world, tmp_path, tiny_models_dir, tiny_profile, **common)
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(want, got, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)


def test_torchrun_trains_on_one_gpu(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, tiny_models_dir: Path
) -> None:
    """The multi-GPU path (DDP over NCCL) with one rank: the `torchrun` command the README documents."""
    world = small_world(tmp_path_factory)
    cfg = stage_config(
        "encoder", world, tmp_path, tiny_models_dir, max_steps=4, device="auto", precision="bf16"
    )
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"]
    command += ["-m", "nextgpt_serve.cli"]
    done = subprocess.run(
        [*command, "train", "--stage", "encoder", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = read_metrics(cfg.output_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert (cfg.output_dir / "pytorch_model.pt").is_file()
