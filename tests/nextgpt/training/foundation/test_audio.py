"""The shapes-world audio pipeline: each part lowers its loss, the saved directory loads through the served
`AudioDecoder` and plays from a caption's CLAP embedding, held-out phrasings stay out of training, the mel
front end matches the pipeline's frame count, and one seed gives one pipeline. The reduced setting runs in
about half a minute on two CPU cores."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from nextgpt.config import DecodeDefaults, DecoderConfig
from nextgpt.decoders.audio import AudioDecoder
from nextgpt.media.decode import read_audio
from nextgpt.tiny.diffusion import HOP
from nextgpt.training.data.world_media import SOUNDS
from nextgpt.training.foundation.audio import AudioTrainConfig, score, train_audio_pipeline
from nextgpt.training.foundation.audio_parts import (
    HELDOUT_TEMPLATES,
    PHRASES,
    LogMel,
    build_vocoder,
    heldout_captions,
    render_sounds,
    synthesis_init,
    training_captions,
)
from nextgpt.training.world_eval import evaluate_world_media


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("audio")
    return out, train_audio_pipeline(out, AudioTrainConfig.reduced())


def test_every_part_lowers_its_loss(trained: tuple[Path, dict[str, Any]]) -> None:
    _, report = trained
    for part in ("vae", "text_encoder", "unet"):
        result = report["parts"][part]
        assert result["last"] < 0.85 * result["first"], (part, result)
    assert report["parts"]["vocoder"]["steps"] == 0  # the synthesiser as built, see the next test


def test_the_synthesis_vocoder_plays_the_world_sounds_from_their_mels() -> None:
    cfg = AudioTrainConfig()
    mel = LogMel(cfg.n_mels)
    which = [i for i in range(len(SOUNDS)) for _ in range(3)]
    waves = render_sounds(which, cfg, random.Random(1))
    with torch.no_grad():
        played = synthesis_init(build_vocoder(cfg))(mel(waves))  # (B, N)
    accuracy = score([SOUNDS[i] for i in which], played.numpy())["accuracy"]
    assert accuracy["pitch"] == 1.0 and accuracy["sweep"] == 1.0 and accuracy["beeping"] == 1.0, accuracy


def test_the_saved_pipeline_loads_through_the_served_decoder(trained: tuple[Path, dict[str, Any]]) -> None:
    out, report = trained
    pipeline_dir = Path(report["pipeline_dir"])
    assert (pipeline_dir / "model_index.json").is_file() and (pipeline_dir / "vocoder").is_dir()
    cfg = AudioTrainConfig.reduced()
    defaults = DecodeDefaults(**report["decode_defaults"])
    decoder = AudioDecoder.load(DecoderConfig(pipeline_dir=pipeline_dir, defaults=defaults))
    assert decoder.cond_shape == (cfg.cond_dim,) and decoder.sample_rate == 16000
    cond = decoder.encode_text(["a high tone"])  # (1, D): what the output projector will learn to imitate
    items = decoder.decode(cond, decoder.defaults, seed=0)
    assert len(items) == 1 and items[0].mime_type == "audio/wav"
    wave, rate = read_audio(items[0].data, sample_rate=16000)
    assert rate == 16000 and wave.shape[-1] == round(cfg.seconds * 16000)
    # Scored by the world's classifiers (the reduced model plays no clean tone yet: only the call is checked).
    scored = evaluate_world_media([("a high tone", items[0])])
    assert scored.all.total == 1 and scored.items[0].kind == "audio"
    assert (out / "samples.png").is_file() and len(list((out / "samples").glob("*.wav"))) == len(SOUNDS)
    assert set(report["heldout"]["heldout_phrasing"]["accuracy"]) >= {"pitch", "sweep", "sound"}


def test_heldout_phrasings_stay_out_of_training() -> None:
    captions, labels = training_captions(random.Random(0))
    assert set(labels) == set(range(len(SOUNDS))) and all(PHRASES[s][0] == s for s in SOUNDS)
    lowered = {c.lower().rstrip(".") for c in captions}
    held = heldout_captions()
    assert len(held) == len(SOUNDS) * len(HELDOUT_TEMPLATES)
    assert not {prompt for _, prompt in held} & lowered
    assert not any("hear" in c or "produce" in c for c in lowered)


def test_log_mel_has_one_frame_per_hop_and_a_tone_where_it_should_be() -> None:
    cfg = AudioTrainConfig()
    mel = LogMel(cfg.n_mels)
    waves = render_sounds([SOUNDS.index("a low tone"), SOUNDS.index("a high tone")], cfg, random.Random(0))
    spec = mel(waves)  # (2, T, M)
    assert spec.shape == (2, waves.shape[1] // HOP, cfg.n_mels) and spec.shape[1] == cfg.frames
    low, high = spec.mean(dim=1).argmax(dim=-1).tolist()
    assert low < high and spec.min() >= torch.log(torch.tensor(1e-5)) - 1e-4


def test_one_seed_gives_one_pipeline(tmp_path: Path) -> None:
    cfg = replace(
        AudioTrainConfig.reduced(),
        vae_steps=2,
        vocoder_steps=2,  # the fine-tuning path, which the profile leaves off
        text_steps=2,
        unet_steps=2,
        bank_size=8,
        eval_steps=1,
    )
    a = train_audio_pipeline(tmp_path / "a", cfg)
    b = train_audio_pipeline(tmp_path / "b", cfg)
    for part in ("unet", "vae", "text_encoder", "vocoder"):
        wa = load_file(Path(a["pipeline_dir"]) / part / _weights(part))
        wb = load_file(Path(b["pipeline_dir"]) / part / _weights(part))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), part
    for part in ("vae", "vocoder", "text_encoder", "unet"):
        assert a["parts"][part]["last"] == b["parts"][part]["last"], part


def _weights(part: str) -> str:
    transformers_part = part in ("text_encoder", "vocoder")
    return "model.safetensors" if transformers_part else "diffusion_pytorch_model.safetensors"
