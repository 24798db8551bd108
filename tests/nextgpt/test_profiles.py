"""Profiles: built-ins, file and environment overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextgpt.config import DecodeDefaults, DecodeOptions, GenerationOptions, Placement
from nextgpt.errors import ConfigError
from nextgpt.profiles import load_profile, profile_names


def test_builtin_profiles_have_the_designed_shapes():
    assert profile_names() == ["tiny", "shapes", "nextgpt-7b-tiva-v0"]
    real = load_profile("nextgpt-7b-tiva-v0", models_dir="/m", env={})
    assert (real.input_projector.in_dim, real.input_projector.out_dim) == (1024, 4096)
    shapes = {m: (p.num_signal_tokens, p.num_queries, p.out_dim) for m, p in real.output_projectors.items()}
    assert shapes == {"image": (4, 77, 768), "video": (24, 77, 1024), "audio": (8, 1, 512)}
    assert real.llm.lora is not None and (real.llm.lora.r, real.llm.lora.alpha) == (32, 32)
    assert real.decoders["video"].defaults.height == 320 and real.decoders["video"].defaults.width == 576
    assert real.llm.base_dir == Path("/m/nextgpt-7b-tiva-v0/vicuna-7b-v0")
    tiny = load_profile(env={})
    assert tiny.name == "tiny"
    assert tiny.output_projectors["audio"].normalize and not tiny.output_projectors["image"].normalize


def test_shapes_profile_reads_the_manifest_of_its_build(tmp_path):
    """Fixed paths under models/shapes/; what the build settled (decode defaults, widths) from its
    manifest, when there is one."""
    before = load_profile("shapes", models_dir=tmp_path, env={})
    assert before.encoder.arch == "shapes" and before.input_projector.in_dim == before.encoder.embed_dim
    assert before.decoders["image"].pipeline_dir == tmp_path / "shapes" / "stable-diffusion"
    assert before.llm.base_dir == tmp_path / "shapes" / "vicuna"
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "manifest.json").write_text(
        '{"profile": {"decoders": {"image": {"defaults": {"steps": 20, "height": 32, "width": 32}}},'
        ' "output_projectors": {"audio": {"out_dim": 40}}}, "built": {"seed": 3}}'
    )
    after = load_profile("shapes", models_dir=tmp_path, env={})
    assert after.decoders["image"].defaults.steps == 20 and after.decoders["image"].defaults.height == 32
    assert after.output_projectors["audio"].out_dim == 40
    assert after.decoders["video"].defaults == before.decoders["video"].defaults


def test_yaml_file_then_env_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "profile: nextgpt-7b-tiva-v0\n"
        "llm: {placement: {device: cuda:1, dtype: float16}}\n"
        "decoders: {video: {offload: true, defaults: {steps: 25}}}\n"
    )
    env = {"NEXTGPT__LLM__PLACEMENT__DTYPE": "bfloat16", "NEXTGPT__DECODERS__AUDIO__OFFLOAD": "true"}
    profile = load_profile(config_file=config, env=env)
    assert profile.name == "nextgpt-7b-tiva-v0"
    assert profile.llm.placement == Placement("cuda:1", "bfloat16")
    assert profile.decoders["video"].offload and profile.decoders["video"].defaults.steps == 25
    assert profile.decoders["audio"].offload and not profile.decoders["image"].offload


def test_toml_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('profile = "tiny"\n[encoder.placement]\ndevice = "cuda"\n')
    assert load_profile(config_file=config, env={}).encoder.placement.device == "cuda"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NEXTGPT_PROFILE": "gpt-5"}, "unknown profile 'gpt-5'"),
        ({"NEXTGPT__LLM__PLACEMENT__DTYPE": "int3"}, "dtype='int3'"),
        ({"NEXTGPT__LLM__WARP_DRIVE": "1"}, "has no field"),
        ({"NEXTGPT__DECODERS__IMAGE__DEFAULTS__HEIGHT": "100"}, "use /8"),
        ({"NEXTGPT__INPUT_PROJECTOR__IN_DIM": "77"}, "in_dim=77"),
    ],
)
def test_bad_configuration_names_the_value(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_profile(env=env)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(config_file=tmp_path / "nope.yaml", env={})


def test_cuda_placement_falls_back_to_cpu_without_a_gpu():
    import torch

    resolved = Placement("cuda", "float16").resolve()
    if not torch.cuda.is_available():
        assert resolved == Placement("cpu", "float32")


def test_generation_options_validate_and_merge_decode_settings():
    with pytest.raises(ConfigError, match="top_p"):
        GenerationOptions(top_p=0)
    with pytest.raises(ConfigError, match="modalities"):
        GenerationOptions(modalities=("text", "smell"))
    options = GenerationOptions(modalities=("text", "audio", "image"))
    assert options.requested_media == ["image", "audio"]
    merged = DecodeOptions(steps=3).resolve(DecodeDefaults(steps=50, height=64, width=64))
    assert (merged.steps, merged.height) == (3, 64)
    with pytest.raises(ConfigError, match="steps"):
        DecodeOptions(steps=0).resolve(DecodeDefaults())
