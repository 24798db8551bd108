"""The NExT-GPT delta: released key names, split/join, loading into modules, profile checks."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nextgpt import tiny_profile as dims
from nextgpt.checkpoint import (
    DeltaCheckpoint,
    check_against_profile,
    join_delta,
    load_delta,
    load_into,
    save_delta,
    split_delta,
)
from nextgpt.config import ProfileConfig
from nextgpt.errors import CheckpointError, ModelNotReady
from nextgpt.profiles import load_profile
from nextgpt.projectors.input import LinearInputProjector, build_input_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.tiny.checkpoint import build_tiny_delta

BASE_VOCAB, HIDDEN, LAYERS = dims.LLM_BASE_VOCAB, dims.LLM_HIDDEN, dims.LLM_LAYERS


def _fake_base(base_dir: Path, vocab: int = BASE_VOCAB) -> Path:
    """Just what the delta builder reads from an HF Llama dir: config.json and the two vocab matrices."""
    base_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "vocab_size": vocab,
        "num_attention_heads": dims.LLM_HEADS,
        "intermediate_size": dims.LLM_INTERMEDIATE,
    }
    (base_dir / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(123)
    save_file(
        {
            "model.embed_tokens.weight": torch.randn(vocab, HIDDEN, generator=gen),
            "lm_head.weight": torch.randn(vocab, HIDDEN, generator=gen),
        },
        base_dir / "model.safetensors",
    )
    return base_dir


@pytest.fixture
def profile(tmp_path: Path) -> ProfileConfig:
    prof = load_profile("tiny", models_dir=tmp_path / "models", env={})
    _fake_base(prof.llm.base_dir)
    return prof


@pytest.fixture
def delta_path(profile: ProfileConfig) -> Path:
    assert profile.delta_checkpoint is not None
    return build_tiny_delta(profile.llm.base_dir, profile.delta_checkpoint, profile)


_TFM_LAYER_KEYS = {
    "encoder": [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    ],
    "decoder": [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias",
        "multihead_attn.out_proj.weight", "multihead_attn.out_proj.bias", "linear1.weight", "linear1.bias",
        "linear2.weight", "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
        "norm3.weight", "norm3.bias",
    ],
}  # fmt: skip


def _released_patterns() -> set[str]:
    lora = "llama_model.base_model.model.model.layers.{i}.self_attn.%s.lora_%s.default.weight"
    keys = {
        "llama_proj.weight",
        "llama_proj.bias",
        "llama_model.base_model.model.model.embed_tokens.weight",
        "llama_model.base_model.model.lm_head.weight",
        *(lora % (p, ab) for p in ("q_proj", "k_proj", "v_proj", "o_proj") for ab in "AB"),
    }
    for prefix in ("gen_text_hidden_fcs.0.", "gen_text_hidden_fcs_video.0.", "gen_text_hidden_fcs_audio.0."):
        keys |= {prefix + k for k in ("fc.weight", "fc.bias", "model.weight", "model.bias", "query_embs")}
        for side, names in _TFM_LAYER_KEYS.items():
            keys |= {f"{prefix}tfm.{side}.layers.{{i}}.{n}" for n in names}
            keys |= {f"{prefix}tfm.{side}.norm.weight", f"{prefix}tfm.{side}.norm.bias"}
    return keys


def test_tiny_delta_has_released_key_names(delta_path: Path) -> None:
    state = torch.load(delta_path, weights_only=True)
    patterns = {re.sub(r"\.layers\.\d+\.", ".layers.{i}.", k) for k in state}
    assert patterns == _released_patterns()
    layer_ids = {int(m.group(1)) for k in state if (m := re.search(r"\.layers\.(\d+)\.", k))}
    assert layer_ids == set(range(LAYERS))  # LLM: 2 layers, tiny projectors: 2 + 2 layers
    assert len(state) == 4 + 8 * LAYERS + 3 * (5 + 4 + LAYERS * (12 + 18))


def test_tiny_delta_shapes_and_base_rows(profile: ProfileConfig, delta_path: Path) -> None:
    delta = load_delta(delta_path)
    vocab = BASE_VOCAB + 38
    assert delta.vocab_size == vocab and delta.hidden_size == HIDDEN
    assert delta.lora_rank == dims.LORA_R and delta.lora_layers == LAYERS
    assert delta.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert delta.embed_tokens is not None and delta.lm_head is not None
    assert delta.embed_tokens.shape == delta.lm_head.shape == (vocab, HIDDEN)
    from safetensors.torch import load_file

    base = load_file(profile.llm.base_dir / "model.safetensors")
    assert torch.equal(delta.embed_tokens[:BASE_VOCAB], base["model.embed_tokens.weight"])
    assert torch.equal(delta.lm_head[:BASE_VOCAB], base["lm_head.weight"])
    assert delta.embed_tokens[BASE_VOCAB:].abs().sum() > 0
    a = delta.lora["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    b = delta.lora["base_model.model.model.layers.1.self_attn.o_proj.lora_B.default.weight"]
    assert a.shape == (dims.LORA_R, HIDDEN) and b.shape == (HIDDEN, dims.LORA_R)
    assert all(t.abs().sum() > 0 for k, t in delta.lora.items() if "lora_B" in k)  # B non-zero
    assert delta.input_projector["weight"].shape == (HIDDEN, dims.ENCODER_EMBED)
    check_against_profile(delta, profile)


def test_deterministic(profile: ProfileConfig, tmp_path: Path) -> None:
    one = torch.load(build_tiny_delta(profile.llm.base_dir, tmp_path / "a.pt", profile), weights_only=True)
    rng_before = torch.get_rng_state()
    two = torch.load(build_tiny_delta(profile.llm.base_dir, tmp_path / "b.pt", profile), weights_only=True)
    assert torch.equal(rng_before, torch.get_rng_state())  # the caller's RNG is left alone
    other = torch.load(
        build_tiny_delta(profile.llm.base_dir, tmp_path / "c.pt", profile, seed=1), weights_only=True
    )
    assert list(one) == list(two) == list(other)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["llama_proj.weight"], other["llama_proj.weight"])


def test_split_join_round_trip(delta_path: Path, tmp_path: Path) -> None:
    state = torch.load(delta_path, weights_only=True)
    joined = join_delta(split_delta(state))
    assert list(joined) == list(state)
    assert all(joined[k] is state[k] for k in state)
    again = torch.load(
        save_delta(load_delta(delta_path), tmp_path / "out" / "pytorch_model.pt"), weights_only=True
    )
    assert list(again) == list(state) and all(torch.equal(again[k], state[k]) for k in state)


def test_unknown_key_is_named(delta_path: Path) -> None:
    state = dict(torch.load(delta_path, weights_only=True))
    state["visual_encoder.trunk.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"visual_encoder\.trunk\.weight.*Understood: llama_proj\."):
        split_delta(state)


def test_full_llm_weights_are_refused(delta_path: Path) -> None:
    state = dict(torch.load(delta_path, weights_only=True))
    for i in range(7):
        state[f"llama_model.base_model.model.model.layers.{i}.mlp.up_proj.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"7 key\(s\).*\(7 in all\).*full or merged LLM weights"):
        split_delta(state)


def test_load_delta_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match="nope.pt"):
        load_delta(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a torch state dict"):
        load_delta(tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_delta(tmp_path / "list.pt")
    torch.save({"module": {"a": torch.zeros(1)}}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="not tensors: module"):
        load_delta(tmp_path / "nested.pt")


def test_projectors_load_from_tiny_delta(profile: ProfileConfig, delta_path: Path) -> None:
    delta = load_delta(delta_path)
    inp = build_input_projector(profile.input_projector)
    load_into(inp, delta.input_projector, "input projector")
    assert torch.equal(inp.state_dict()["weight"], delta.input_projector["weight"])
    for modality, state in delta.output_projectors.items():
        proj = OutputProjector(profile.output_projectors[modality])
        load_into(proj, state, f"{modality} output projector")
        assert torch.equal(proj.query_embs.detach(), state["query_embs"])


def test_load_into_wrong_shape_names_key(profile: ProfileConfig, delta_path: Path) -> None:
    state = dict(load_delta(delta_path).output_projectors["image"])
    state["model.weight"] = torch.zeros(768, dims.PROJ_D_MODEL)
    proj = OutputProjector(profile.output_projectors["image"])
    before = proj.fc.weight.detach().clone()
    with pytest.raises(
        CheckpointError, match=r"image output projector.*model\.weight expected \[32, 32\] got \[768, 32\]"
    ):
        load_into(proj, state, "image output projector")
    assert torch.equal(proj.fc.weight, before)  # nothing copied


def test_load_into_missing_and_unexpected(profile: ProfileConfig) -> None:
    proj = LinearInputProjector(profile.input_projector)
    with pytest.raises(CheckpointError, match=r"input projector.*unexpected keys: extra.*missing keys: bias"):
        load_into(proj, {"weight": proj.weight.detach(), "extra": torch.zeros(1)}, "input projector")
    load_into(proj, {"weight": torch.zeros_like(proj.weight)}, "input projector", allow_missing=True)
    assert proj.weight.abs().sum() == 0


def test_profile_check_catches_768_vs_1024(tmp_path: Path, delta_path: Path) -> None:
    delta = load_delta(delta_path)
    delta.output_projectors["image"]["model.weight"] = torch.zeros(768, dims.PROJ_D_MODEL)
    delta.output_projectors["image"]["model.bias"] = torch.zeros(768)
    wanted = load_profile(
        "tiny", models_dir=tmp_path / "models", env={"NEXTGPT__OUTPUT_PROJECTORS__IMAGE__OUT_DIM": "1024"}
    )
    with pytest.raises(
        CheckpointError,
        match=r"image projector outputs 768 but the profile's decoder expects 1024: "
        r"this checkpoint was made for SD 1\.5",
    ):
        check_against_profile(delta, wanted)


def test_profile_check_lora_rank_vocab_and_encoder(tmp_path: Path, delta_path: Path) -> None:
    delta = load_delta(delta_path)
    env = {
        "NEXTGPT__LLM__LORA__R": "16",
        "NEXTGPT__ENCODER__EMBED_DIM": "48",
        "NEXTGPT__INPUT_PROJECTOR__IN_DIM": "48",
    }
    other = load_profile("tiny", models_dir=tmp_path / "models", env=env)
    _fake_base(other.llm.base_dir, vocab=BASE_VOCAB + 4)  # a different base, like Llama-2 vs LLaMA-1
    with pytest.raises(CheckpointError) as info:
        check_against_profile(delta, other)
    message = str(info.value)
    assert "LoRA rank is 8 but the profile says llm.lora.r=16" in message
    assert "wrong base model" in message and "1038 rows" in message
    assert "takes 32-d embeddings but the profile's encoder gives 48" in message


def test_partial_delta_with_require_all(profile: ProfileConfig) -> None:
    stage1 = DeltaCheckpoint(
        input_projector={"weight": torch.zeros(HIDDEN, dims.ENCODER_EMBED), "bias": torch.zeros(HIDDEN)}
    )
    no_lora = load_profile(
        "tiny", models_dir=profile.llm.base_dir.parent.parent, env={"NEXTGPT__LLM__LORA": "null"}
    )
    check_against_profile(stage1, no_lora, require_all=False)
    with pytest.raises(CheckpointError, match="no image output projector"):
        check_against_profile(stage1, no_lora)
