"""bench/gpu_real_size.py: the real configs hold the real shapes, the script runs end to end at tiny scale
on the CPU, and at real scale on the meta device it counts parameters and FLOPs. No timing assertions:
the figures themselves belong to a GPU run."""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
CONFIGS = BENCH_DIR / "configs" / "real"
PARTS = ("llm", "encoder", "image", "video", "audio")


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """The script as a module (bench/ is not a package: its folder goes on sys.path, as when run)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("gpu_real_size")
    finally:
        sys.path.remove(str(BENCH_DIR))


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_real_configs_have_the_real_shapes() -> None:
    from transformers import ClapTextConfig, CLIPTextConfig, LlamaConfig, SpeechT5HifiGanConfig

    from nextgpt.encoders.imagebind import ARCHS, imagebind_module

    llm = LlamaConfig.from_pretrained(CONFIGS / "vicuna-7b-v0")  # LLaMA-1 7B, before the signal tokens
    assert (llm.hidden_size, llm.num_hidden_layers, llm.num_attention_heads) == (4096, 32, 32)
    assert (llm.intermediate_size, llm.vocab_size, llm.max_position_embeddings) == (11008, 32000, 2048)

    # Each decoder's text encoder width is what its UNet cross-attends to: SD 77x768, Zeroscope 77x1024.
    for name, width in (("stable-diffusion-v1-5", 768), ("zeroscope-v2-576w", 1024)):
        text = CLIPTextConfig.from_pretrained(CONFIGS / name / "text_encoder")
        assert (text.max_position_embeddings, text.hidden_size) == (77, width)
        assert _json(CONFIGS / name / "unet" / "config.json")["cross_attention_dim"] == width
    # AudioLDM: the 512-d CLAP projection enters as class labels; HiFi-GAN turns 64 mel bins into 16 kHz.
    clap = ClapTextConfig.from_pretrained(CONFIGS / "audioldm-l-full" / "text_encoder")
    unet = _json(CONFIGS / "audioldm-l-full" / "unet" / "config.json")
    assert clap.projection_dim == unet["projection_class_embeddings_input_dim"] == 512
    vocoder = SpeechT5HifiGanConfig.from_pretrained(CONFIGS / "audioldm-l-full" / "vocoder")
    assert (vocoder.model_in_dim, vocoder.sampling_rate) == (64, 16000)
    assert int(torch.tensor(vocoder.upsample_rates).prod()) == 160  # samples per mel frame (10 ms)

    # ImageBind-huge: every constructor argument, equal to the arch the repo loads imagebind_huge.pth into.
    defaults = {
        k: p.default
        for k, p in inspect.signature(imagebind_module().ImageBindModel.__init__).parameters.items()
        if k != "self"
    }
    huge = _json(CONFIGS / "imagebind-huge" / "config.json")
    assert huge == json.loads(json.dumps({**defaults, **ARCHS["huge"]}))  # tuples as lists
    assert (huge["vision_embed_dim"], huge["vision_num_blocks"], huge["out_embed_dim"]) == (1280, 32, 1024)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100 pcie"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("NVIDIA A100-PCIE-40GB", "a100"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("Tesla T4", "t4"),
    ],
)
def test_peaks_by_device_name(bench: ModuleType, name: str, fragment: str) -> None:
    row = bench.peaks_for_name(name)
    assert row is not None and row[0] == fragment
    assert bench.peaks_for_name("Some Future GPU") is None


def test_tiny_run_on_cpu(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.json"
    assert bench.main(["--scale", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    report = _json(out)
    assert (report["scale"], report["device"], report["dtype"]) == ("tiny", "cpu", "float32")
    assert tuple(report["components"]) == PARTS
    for part, result in report["components"].items():
        assert "error" not in result, result
        assert result["results"], part
        for row in result["results"]:
            assert row["ms"] > 0, (part, row)
            assert row["limit_ms"] is None and row["ratio"] is None  # no roofline on a CPU
            assert (row["flops"] or 0) > 0 or (row["bytes"] or 0) > 0, (part, row)
    names = [row["name"] for row in report["components"]["llm"]["results"]]
    assert "HF decode, batch 1" in names and "HF decode, batch 32" in names
    assert [row["name"].split()[1] for row in report["components"]["encoder"]["results"]] == [
        "image",
        "audio",
        "video",
    ]
    assert report["components"]["llm"]["vocab"] == 32038  # the tiny LLM keeps the real vocabulary
    assert "| llm | HF decode, batch 1 |" in capsys.readouterr().out


def test_real_scale_on_meta_counts_without_timing(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "meta.json"
    argv = ["--device", "meta", "--only", "llm,encoder,image,audio", "--out", str(out)]
    assert bench.main([*argv, "--peak-tflops", "989", "--bandwidth-gbs", "4800"]) == 0
    parts = _json(out)["components"]
    llm = parts["llm"]
    assert llm["shape"] == {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32}
    assert llm["vocab"] == 32038
    assert llm["params"] == 6_738_415_616 + 38 * 4096 * 2  # LLaMA-7B plus the signal-token rows
    assert llm["weight_bytes"] == 2 * (llm["params"] - 32038 * 4096)  # fp16, all but the embedding table
    # Published sizes of SD 1.5's parts; AudioLDM-L's UNet is the paper's 739 M.
    assert parts["image"]["params"] == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert parts["audio"]["params"]["unet"] == 739_139_080
    assert parts["image"]["shape"]["unet_sample"] == [1, 4, 64, 64]
    assert parts["audio"]["shape"]["unet_sample"] == [1, 8, 125, 16]  # 5 s = 500 mel frames, VAE x4
    flops = parts["image"]["flops"]
    assert flops["total"] == flops["unet_step"] * 50 * 2 + flops["vae_decode"]
    assert 0.3e12 < parts["encoder"]["results"][0]["flops"] < 0.4e12  # ViT-H/14 at 224 px
    for result in parts.values():
        for row in result["results"]:
            assert row["ms"] is None and row["ratio"] is None and row["limit_ms"] > 0


def test_cuda_without_a_gpu_says_what_to_run(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cpu --scale tiny" in capsys.readouterr().err
