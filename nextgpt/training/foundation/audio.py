"""The `shapes` profile's AudioLDM-format audio pipeline, trained on the shapes world's sounds (issue 12).

Four parts, three trained with their own run of the shared loop (`loop.py`) and one constructed, wired into
the real `AudioLDMPipeline` and saved with `save_pretrained`, so that the served `AudioDecoder` loads it
unchanged. The pipeline turns latents into sound as `decode_latents` + `mel_spectrogram_to_waveform` do:
latents / scaling_factor -> VAE decoder -> (B, 1, frames, mel bins) log-mel -> HiFi-GAN -> waveform.

1. the mel VAE (`AutoencoderKL`, x4): reconstruction of AudioLDM's log-mel spectrograms (|STFT| 1024 /
   hop 160 at 16 kHz, Slaney mel over 0-8 kHz, log of the magnitude clamped at 1e-5) of sounds rendered
   on the fly;
2. the vocoder (`SpeechT5HifiGan`, one x160 stage): log-mel -> waveform, *constructed* as an overlap-add
   synthesiser of the 100 Hz harmonics (`audio_parts.synthesis_init`), not trained. Any HiFi-GAN is
   shift-equivariant by one 160-sample frame, so a steady tone's constant mel can only give a 160-periodic
   waveform (harmonics of 100 Hz); a small 3-stage HiFi-GAN trained here for 600 steps (mel L1 +
   multi-resolution STFT, no discriminator, 3.5 min) reached only buzzing combs (world_eval on its
   reconstructions: pitch 75%, tone/chord/sweep 62%), the synthesiser reads 100% pitch, sweep direction
   and beeping, 77% tone/chord/sweep. `vocoder_steps` > 0 fine-tunes it with those losses (off: measured
   worse);
3. the CLAP-format text encoder (`ClapTextModelWithProjection`, with a RoBERTa byte-level BPE trained
   here on the phrasings): a cosine classifier over the world's sounds on its L2-normalised `text_embeds`
   (what the pipeline, the decoder and the output projector's stage-2 target use), over the world caption
   and paraphrases, so that the (D,) conditioning names the sound however it is phrased. Then frozen;
4. the UNet (`UNet2DConditionModel`, class-embedding conditioned as AudioLDM: `class_labels` = the
   normalised CLAP projection, concatenated to the time embedding): epsilon prediction under the saved
   DDIM scheduler's `alphas_cumprod` (AudioLDM's betas), min-SNR weighting, and the empty caption's
   embedding for `uncond_prob` of the examples so that classifier-free guidance works.

The text encoder (3) trains first (`text_stage`: it needs nothing the other parts make) and is also saved
alone, so that `make train-world` trains the LLM's stages against it while the VAE and the UNet train.

Held out: the phrasings in HELDOUT_TEMPLATES never appear in training; every sound instance is rendered
fresh (random pitch, loudness). `train_audio_pipeline` ends by decoding every world sound in those
phrasings through the real decoder for several seeds and scoring the waveforms with `world_eval`.

Every random draw comes from the loop's per-step generator or from generators seeded by `cfg.seed`, so a
seed gives the same weights (with a fixed thread count; run with OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.deprecated.audioldm.pipeline_audioldm import AudioLDMPipeline
from PIL import Image, ImageDraw
from torch import nn
from torch.nn import functional as F
from transformers import (
    ClapTextModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
)

from nextgpt.config import DecodeDefaults, DecoderConfig
from nextgpt.media.encode import encode_wav
from nextgpt.tiny.diffusion import HOP, SAMPLE_RATE
from nextgpt.training.data.world_media import SOUNDS
from nextgpt.training.foundation.audio_parts import (
    LOG_FLOOR,
    PHRASES,
    TEMPLATES,
    AudioTrainConfig,
    LogMel,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    build_vocoder,
    draw_sounds,
    heldout_captions,
    render_sounds,
    synthesis_init,
    tokenize,
    training_captions,
)
from nextgpt.training.foundation.diffusion import (
    TEXT_PIPELINE,
    Denoise,
    PartResult,
    fit_part,
    latent_bank,
    run_times,
    save_pipeline,
    save_text_pipeline,
    train_unet,
    vae_loss,
)
from nextgpt.training.world_eval import AudioClip, caption_attributes, evaluate_world_media

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# The four parts


def train_vae(cfg: AudioTrainConfig, mel: LogMel, state: Path) -> tuple[AutoencoderKL, PartResult]:
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    # Start the decoder's output at the mean log-mel: most bins of a pure sound sit at the floor (-11.5),
    # which a zero-initialised output would spend its first hundred steps reaching.
    with torch.no_grad():
        waves, _ = draw_sounds(16, cfg, torch.Generator().manual_seed(cfg.seed))
        bias = vae.decoder.conv_out.bias
        assert bias is not None  # diffusers' conv_out has one
        bias.fill_(float(mel(waves).mean()))

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        waves, _ = draw_sounds(cfg.vae_batch, cfg, gen)
        spec = mel(waves)  # (B, T, M)
        start = torch.randint(cfg.frames - cfg.vae_frames + 1, (cfg.vae_batch,), generator=gen).tolist()
        # (B, 1, F, M): the layout `decode_latents` returns, on a crop
        x = torch.stack([spec[i, s : s + cfg.vae_frames] for i, s in enumerate(start)]).unsqueeze(1)
        return vae_loss(vae, x, cfg.kl_weight)

    return vae, fit_part(
        vae, loss_fn, cfg, steps=cfg.vae_steps, lr=cfg.vae_lr, name="audio-vae", state_dir=state / "vae"
    )


def stft_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020, Parallel WaveGAN): spectral convergence + log
    magnitude L1 at 16, 32 and 64 ms windows; the long one pins a tone's frequency, the short ones its
    onsets (beeps)."""
    total = torch.zeros(())
    for n_fft in (256, 512, 1024):
        window = torch.hann_window(n_fft)
        mag_y = torch.stft(y, n_fft, n_fft // 4, n_fft, window, return_complex=True).abs() + 1e-7
        mag_x = torch.stft(x, n_fft, n_fft // 4, n_fft, window, return_complex=True).abs() + 1e-7
        convergence = torch.linalg.norm(mag_y - mag_x) / torch.linalg.norm(mag_x)
        total = total + convergence + F.l1_loss(mag_y.log(), mag_x.log())
    return total / 3


def train_vocoder(cfg: AudioTrainConfig, mel: LogMel, state: Path) -> tuple[SpeechT5HifiGan, PartResult]:
    """The synthesiser of `synthesis_init`, then (`vocoder_steps` > 0) fine-tuned with HiFi-GAN's mel L1
    plus a multi-resolution STFT loss on random crops of fresh sounds (no discriminator)."""
    vocoder = synthesis_init(build_vocoder(cfg))
    frames = cfg.vocoder_frames

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        waves, _ = draw_sounds(cfg.vocoder_batch, cfg, gen)  # (B, N)
        spec = mel(waves)  # (B, T, M) of the whole clip: crops see their true context at the edges
        start = torch.randint(cfg.frames - frames + 1, (cfg.vocoder_batch,), generator=gen).tolist()
        crops = torch.stack([spec[i, s : s + frames] for i, s in enumerate(start)])  # (B, F, M)
        target = torch.stack([waves[i, s * HOP : (s + frames) * HOP] for i, s in enumerate(start)])
        out = vocoder(crops)  # (B, F x HOP)
        return F.l1_loss(mel(out), mel(target)) + stft_loss(out, target)

    if cfg.vocoder_steps == 0:
        with torch.no_grad():
            loss = float(loss_fn(0, torch.Generator().manual_seed(cfg.seed)))
        vocoder.requires_grad_(False)
        return vocoder, PartResult(loss, loss, 0, 0.0)
    return vocoder, fit_part(
        vocoder,
        loss_fn,
        cfg,
        steps=cfg.vocoder_steps,
        lr=cfg.vocoder_lr,
        name="audio-vocoder",
        state_dir=state / "vocoder",
    )


class SoundClassifier(nn.Module):
    """Cosine classifier over SOUNDS on the normalised CLAP projection: pulls every phrasing of a sound to
    one direction and the sounds apart, which is what the UNet (and the output projector) read."""

    def __init__(self, width: int, scale: float = 10.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(len(SOUNDS), width))
        self.scale = scale

    def forward(self, embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.scale * F.normalize(embeds, dim=-1) @ F.normalize(self.prototypes, dim=-1).T  # (B, S)
        return F.cross_entropy(logits, labels)


def train_text_encoder(
    cfg: AudioTrainConfig, tokenizer: RobertaTokenizer, state: Path
) -> tuple[ClapTextModelWithProjection, PartResult]:
    torch.manual_seed(cfg.seed + 1)
    encoder = build_text_encoder(cfg, len(tokenizer))
    classifier = SoundClassifier(cfg.cond_dim)
    captions, labels = training_captions(random.Random(f"{cfg.seed}:audio-text"))
    ids, mask = tokenize(tokenizer, captions)
    target = torch.tensor(labels)
    module = nn.ModuleDict({"encoder": encoder, "classifier": classifier})

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        pick = torch.randint(len(ids), (cfg.text_batch,), generator=gen)
        embeds = encoder(ids[pick], attention_mask=mask[pick]).text_embeds  # (B, D)
        return classifier(embeds, target[pick])

    return encoder, fit_part(
        module,
        loss_fn,
        cfg,
        steps=cfg.text_steps,
        lr=cfg.text_lr,
        name="audio-text",
        state_dir=state / "text",
    )


@torch.no_grad()
def encode_captions(
    encoder: ClapTextModelWithProjection, tokenizer: RobertaTokenizer, captions: Sequence[str]
) -> torch.Tensor:
    """(N, D) L2-normalised `text_embeds`, as the pipeline's `_encode_prompt` and `AudioDecoder` compute
    them."""
    ids, mask = tokenize(tokenizer, captions)
    return F.normalize(encoder(ids, attention_mask=mask).text_embeds, dim=-1)


@torch.no_grad()
def encode_bank(
    vae: AutoencoderKL, mel: LogMel, cfg: AudioTrainConfig
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`latent_bank` of `bank_size` clips of the world sounds: latent means (N, C, h, w) of their log-mel."""
    rng = random.Random(f"{cfg.seed}:audio-bank")

    def encode(which: list[int]) -> torch.Tensor:
        return vae.encode(mel(render_sounds(which, cfg, rng)).unsqueeze(1)).latent_dist.mean

    return latent_bank(encode, len(SOUNDS), cfg.bank_size, chunk=64)


def class_conditioned(unet: UNet2DConditionModel) -> Denoise:
    """AudioLDM's UNet: the (normalised) CLAP embedding enters as `class_labels`, no cross-attention."""
    return lambda xt, t, cond: unet(xt, t, encoder_hidden_states=None, class_labels=cond).sample


# ---------------------------------------------------------------------------------------------------------
# The pipeline and its evaluation


def decode_defaults(cfg: AudioTrainConfig) -> DecodeDefaults:
    """The decode settings the `shapes` profile should serve this pipeline with."""
    return DecodeDefaults(steps=cfg.eval_steps, guidance_scale=cfg.eval_guidance, audio_seconds=cfg.seconds)


def score(captions: Sequence[str], waves: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """`world_eval` accuracy of (B, N) waveforms against the world captions: per attribute and "all"."""
    clips = [AudioClip(np.asarray(w, dtype=np.float32), SAMPLE_RATE) for w in waves]
    report = evaluate_world_media(zip((caption_attributes(c) for c in captions), clips, strict=True))
    return {"accuracy": report.accuracy(), "found": [item.found for item in report.items]}


@torch.no_grad()
def reconstruction_fidelity(
    vae: AutoencoderKL, vocoder: SpeechT5HifiGan, mel: LogMel, cfg: AudioTrainConfig, per_sound: int = 3
) -> dict[str, dict[str, float]]:
    """`world_eval` accuracy of fresh sounds through the vocoder alone (mel -> waveform) and through the
    VAE and the vocoder (mel -> latents -> mel -> waveform): the UNet's ceiling."""
    rng = random.Random(f"{cfg.seed}:audio-fidelity")
    which = [i for i in range(len(SOUNDS)) for _ in range(per_sound)]
    captions = [SOUNDS[i] for i in which]
    spec = mel(render_sounds(which, cfg, rng))  # (B, T, M)
    recon = vae.decode(vae.encode(spec.unsqueeze(1)).latent_dist.mean).sample.squeeze(1)
    return {
        "vocoder": score(captions, vocoder(spec))["accuracy"],
        "vae_vocoder": score(captions, vocoder(recon))["accuracy"],
    }


def evaluate(
    pipeline_dir: Path, cfg: AudioTrainConfig
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """Every world sound asked for in the held-out phrasings (and, for comparison, as its world caption)
    through the served `AudioDecoder`, `eval_seeds` seeds each, scored by `world_eval`. Returns the report
    and (caption, waveform) pairs of the world captions' first seed."""
    from nextgpt.decoders.audio import AudioDecoder  # the serving class, loaded as a profile loads it

    options = decode_defaults(cfg)
    decoder = AudioDecoder.load(DecoderConfig(pipeline_dir=pipeline_dir, defaults=options))
    report: dict[str, Any] = {}
    samples: list[tuple[str, np.ndarray]] = []
    pairs = {"heldout_phrasing": heldout_captions(), "world_caption": [(s, s) for s in SOUNDS]}
    for name, asked in pairs.items():
        worlds = [w for w, _ in asked for _ in range(cfg.eval_seeds)]
        prompts = [p for _, p in asked for _ in range(cfg.eval_seeds)]
        seeds = [cfg.seed * 1000 + k for _ in asked for k in range(cfg.eval_seeds)]
        waves = decoder.diffuse(decoder.encode_text(prompts), options, seeds=seeds)  # (B, N)
        report[name] = {**score(worlds, waves), "prompts": prompts}
        if name == "world_caption":
            samples = [(worlds[i], waves[i]) for i in range(0, len(worlds), cfg.eval_seeds)]
    return report, samples


def write_samples(samples: Sequence[tuple[str, np.ndarray]], mel: LogMel, out: Path) -> Path:
    """One WAV per sample under `out/samples/` and a PNG grid of their log-mel spectrograms (time ->, low
    frequencies at the bottom), the caption above each."""
    (out / "samples").mkdir(parents=True, exist_ok=True)
    scale, text_h = 2, 14
    spectra = []
    for k, (caption, wave) in enumerate(samples):
        (out / "samples" / f"{k}_{caption.replace(' ', '_')}.wav").write_bytes(
            encode_wav(wave, sample_rate=SAMPLE_RATE)
        )
        with torch.no_grad():
            spec = mel(torch.as_tensor(wave, dtype=torch.float32)[None])[0].T.flip(0).numpy()  # (M, T)
        level = np.clip((spec - np.log(LOG_FLOOR)) / (spec.max() - np.log(LOG_FLOOR) + 1e-6), 0, 1)
        pixels = Image.fromarray((level * 255).astype(np.uint8)).resize(
            (spec.shape[1] * scale, spec.shape[0] * scale * 2), Image.Resampling.NEAREST
        )
        spectra.append((caption, pixels))
    width = max(p.width for _, p in spectra) + 8
    height = sum(p.height + text_h + 6 for _, p in spectra) + 4
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    top = 4
    for caption, pixels in spectra:
        draw.text((4, top), caption, fill=(0, 0, 0))
        grid.paste(pixels.convert("RGB"), (4, top + text_h))
        top += pixels.height + text_h + 6
    path = out / "samples.png"
    grid.save(path)
    return path


def text_stage(
    out: Path, cfg: AudioTrainConfig
) -> tuple[ClapTextModelWithProjection, RobertaTokenizer, PartResult]:
    """Part 3 of `train_audio_pipeline`, trained first and also run alone (`make train-world` trains the
    LLM against it while the other parts train): the CLAP text encoder, trained or read back from
    `out/state/text`, saved with its tokenizer as `out/text-pipeline` (`save_text_pipeline`)."""
    tokenizer = build_tokenizer(out / "state" / "tokenizer")
    encoder, result = train_text_encoder(cfg, tokenizer, out / "state")
    save_text_pipeline(AudioLDMPipeline, out / TEXT_PIPELINE, encoder, tokenizer, vocoder=None)
    return encoder, tokenizer, result


def train_audio_pipeline(out_dir: str | Path, cfg: AudioTrainConfig | None = None) -> dict[str, Any]:
    """Train the four parts, save the pipeline under `out_dir/pipeline`, evaluate it through the served
    decoder, and write `report.json`, `samples.png` and `samples/*.wav` beside it. Resumable: `out_dir/state`
    keeps each part's loop state."""
    cfg = cfg or AudioTrainConfig()
    out = Path(out_dir)
    state = out / "state"
    t0, cpu0 = time.perf_counter(), time.process_time()
    mel = LogMel(cfg.n_mels)
    # 3 (first: it needs nothing else). The CLAP text encoder over the phrasings (also saved alone).
    encoder, tokenizer, text_result = text_stage(out, cfg)
    # 1-2. The mel VAE and the vocoder, each on freshly rendered sounds.
    vae, vae_result = train_vae(cfg, mel, state)
    vocoder, vocoder_result = train_vocoder(cfg, mel, state)
    fidelity = reconstruction_fidelity(vae, vocoder, mel, cfg)
    logger.info("audio reconstructions read by world_eval: %s", fidelity)
    # 4. The UNet on a bank of VAE latents, conditioned on the frozen encoder's embeddings.
    raw, sound_of, scaling = encode_bank(vae, mel, cfg)
    vae.register_to_config(scaling_factor=scaling)
    phrasings = [[t.format(p) for p in PHRASES[s] for t in TEMPLATES] for s in SOUNDS]
    width = min(len(p) for p in phrasings)
    embeds = encode_captions(encoder, tokenizer, [p for ps in phrasings for p in ps[:width]])
    embeds = embeds.view(len(SOUNDS), width, cfg.cond_dim)
    empty = encode_captions(encoder, tokenizer, [""])[0]  # (D,)
    scheduler = build_scheduler()
    unet, unet_result = train_unet(
        build_unet,
        cfg,
        raw * scaling,
        sound_of,
        embeds,
        empty,
        scheduler,
        name="audio-unet",
        state_dir=state / "unet",
        denoise=class_conditioned,
    )
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # 5. Save in diffusers' layout, load through the served decoder, ask for every sound.
    pipeline_dir = save_pipeline(
        AudioLDMPipeline, out / "pipeline", vae, encoder, tokenizer, unet, scheduler, vocoder=vocoder
    )
    heldout, samples = evaluate(pipeline_dir, cfg)
    grid = write_samples(samples, mel, out)
    report: dict[str, Any] = {
        "pipeline_dir": str(pipeline_dir),
        "samples": str(grid),
        "parts": {
            "vae": asdict(vae_result),
            "vocoder": asdict(vocoder_result),
            "text_encoder": asdict(text_result),
            "unet": asdict(unet_result),
        },
        "reconstruction": fidelity,
        "latent_scaling_factor": scaling,
        "heldout": heldout,
        "decode_defaults": asdict(decode_defaults(cfg)),
        **run_times(t0, cpu0, train_seconds, train_cpu),
        "config": asdict(cfg),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = {k: v["accuracy"] for k, v in heldout.items()}
    logger.info("audio pipeline: %s", json.dumps({"parts": report["parts"], "heldout": summary})[:2000])
    return report
