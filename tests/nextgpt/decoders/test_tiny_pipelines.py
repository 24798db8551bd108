"""The tiny diffusion pipelines: real diffusers format, loadable with `from_pretrained`, deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import AudioLDMPipeline, StableDiffusionPipeline, TextToVideoSDPipeline

from nextgpt import tiny_profile as dims
from nextgpt.tiny.diffusion import build_tiny_audioldm, build_tiny_stable_diffusion, build_tiny_zeroscope

BUILDERS = {
    "image": build_tiny_stable_diffusion,
    "video": build_tiny_zeroscope,
    "audio": build_tiny_audioldm,
}


def _weights(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def test_stable_diffusion_loads_with_real_format(tiny_pipelines: dict[str, Path]) -> None:
    path = tiny_pipelines["image"]
    assert (path / "model_index.json").is_file()
    assert (path / "tokenizer" / "vocab.json").is_file() and (path / "tokenizer" / "merges.txt").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(path)
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.cross_attention_dim == dims.IMAGE_COND_DIM
    assert pipe.text_encoder.config.hidden_size == dims.IMAGE_COND_DIM
    assert pipe.text_encoder.config.max_position_embeddings == 77
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.safety_checker is None
    # CLIP's real vocabulary: these are OpenAI CLIP's ids for the sentence.
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.tokenizer.model_max_length == 77
    assert _size_mb(path) < 20


def test_zeroscope_loads_with_real_format(tiny_pipelines: dict[str, Path]) -> None:
    path = tiny_pipelines["video"]
    pipe = TextToVideoSDPipeline.from_pretrained(path)
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.cross_attention_dim == dims.VIDEO_COND_DIM
    assert pipe.text_encoder.config.hidden_size == dims.VIDEO_COND_DIM
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert _size_mb(path) < 20


def test_audioldm_loads_with_real_format(tiny_pipelines: dict[str, Path]) -> None:
    path = tiny_pipelines["audio"]
    pipe = AudioLDMPipeline.from_pretrained(path)
    assert pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.projection_dim == dims.AUDIO_COND_DIM
    assert pipe.unet.config.class_embed_type == "simple_projection"
    assert pipe.unet.config.projection_class_embeddings_input_dim == dims.AUDIO_COND_DIM
    assert pipe.vocoder.config.sampling_rate == 16000
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    ids = pipe.tokenizer("a dog barks").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id == 0 and ids[-1] == pipe.tokenizer.eos_token_id == 2
    assert pipe.tokenizer.pad_token_id == 1
    assert _size_mb(path) < 5


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_build_is_deterministic(modality: str, tiny_pipelines: dict[str, Path], tmp_path: Path) -> None:
    again = BUILDERS[modality](tmp_path / "again", seed=dims.SEED)
    reference = _weights(tiny_pipelines[modality])
    assert reference and _weights(again) == reference
    for name in ("model_index.json", "tokenizer/tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_pipelines[modality] / name).read_bytes()


def test_other_seed_gives_other_weights(tiny_pipelines: dict[str, Path], tmp_path: Path) -> None:
    other = build_tiny_audioldm(tmp_path / "other", seed=dims.SEED + 1)
    assert _weights(other) != _weights(tiny_pipelines["audio"])
