"""The audio trainer's pieces (`audio.py` trains them): its config, the world sounds and phrasings, AudioLDM's
log-mel front end, and builders of the AudioLDM-format components at the `shapes` profile's sizes."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from tokenizers import ByteLevelBPETokenizer
from torch import nn
from torch.nn import functional as F
from transformers import (
    ClapTextModelWithProjection,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)
from transformers.audio_utils import mel_filter_bank

from nextgpt import tiny_profile as dims
from nextgpt.tiny.diffusion import CLIP_MAX_LENGTH, HOP, SAMPLE_RATE, clap_text_encoder
from nextgpt.training.data.world_media import SOUNDS, WorldConfig, render_audio
from nextgpt.training.foundation.diffusion import kl_vae

logger = logging.getLogger(__name__)

N_FFT = 1024
"""STFT size and window of AudioLDM's mel front end (64 ms at 16 kHz)."""
LOG_FLOOR = 1e-5
"""Mel magnitudes are clamped here before the log (AudioLDM's floor): silence reads log(1e-5) = -11.5."""

PHRASES: dict[str, tuple[str, ...]] = {
    "a low tone": ("a low tone", "a low pitched tone", "a deep tone", "a low note", "a steady low tone"),
    "a high tone": (
        "a high tone",
        "a high pitched tone",
        "a shrill tone",
        "a high note",
        "a steady high tone",
    ),
    "a low beeping tone": (
        "a low beeping tone",
        "low beeps",
        "a deep beeping sound",
        "a low tone that beeps",
    ),
    "a high beeping tone": (
        "a high beeping tone",
        "high beeps",
        "a shrill beeping sound",
        "a high tone that beeps",
    ),
    "a major chord": ("a major chord", "a happy chord", "three notes in a major chord", "a chord in major"),
    "a minor chord": ("a minor chord", "a sad chord", "three notes in a minor chord", "a chord in minor"),
    "a rising sweep": ("a rising sweep", "a sweep going up", "an upward sweep", "a tone rising in pitch"),
    "a falling sweep": (
        "a falling sweep",
        "a sweep going down",
        "a downward sweep",
        "a tone falling in pitch",
    ),
}
"""Per world sound (SOUNDS), the phrases trained on: the world's caption first, then paraphrases."""
TEMPLATES = ("{}", "play {}", "the sound of {}", "generate {}", "{} please", "make {}")
"""Frames around a phrase, trained on (first letters are also upper-cased, and a full stop added, at
random: the LLM writes sentences)."""
FILLERS = tuple("now some the nice clear short simple just again quick loud soft here this one".split())
"""Words inserted at random into training captions; none is in HELDOUT_TEMPLATES or names a sound."""
HELDOUT_TEMPLATES = ("let me hear {}", "could you produce {} for me")
"""Frames never trained on, around the world captions, for the held-out evaluation."""


@dataclass
class AudioTrainConfig:
    """Sizes and step counts of the audio pipeline; the defaults are the `shapes` profile's."""

    seed: int = 0
    seconds: float = 2.0
    """Clip length (the world's `audio_seconds`); frames = seconds x 100."""
    n_mels: int = 32
    """Mel bins of the VAE and the vocoder (a multiple of the VAE's x4)."""
    vae_channels: tuple[int, ...] = (16, 32, 32)
    """VAE block widths; len - 1 downsamplings (x4: 200 x 32 mel -> 50 x 8 latents)."""
    latent_channels: int = 4
    vae_steps: int = 300
    vae_batch: int = 8
    vae_frames: int = 64
    """Mel frames per VAE training crop (0.64 s; the VAE is convolutional, its mid attention sees a crop)."""
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    vocoder_harmonics: int = 16
    """100 Hz harmonics the vocoder synthesises (to 1.6 kHz: the world's sounds reach 1.5 kHz; 4 x 16 = 2 x 32
    mel bins fills conv_pre's channels exactly)."""
    vocoder_steps: int = 0
    """Fine-tuning steps of the synthesiser (`synthesis_init`) with the mel + STFT loss. 0: none. Measured:
    the loss first climbs (5.9 -> 14 in 25 steps at lr 5e-4) and the clean harmonics smear, so the
    `shapes` profile keeps the synthesiser as built (its loss is still reported, on fresh sounds)."""
    vocoder_batch: int = 8
    vocoder_frames: int = 32
    """Mel frames per vocoder training crop (0.32 s)."""
    vocoder_lr: float = 2e-3
    cond_dim: int = dims.AUDIO_COND_DIM
    """Width of the CLAP text projection the UNet is conditioned on (the output projector's target)."""
    text_hidden: int = 32
    text_steps: int = 300
    text_batch: int = 64
    text_lr: float = 2e-3
    unet_channels: tuple[int, ...] = (32, 64, 64)
    """UNet block widths, one level each (x2 downsampling between)."""
    unet_steps: int = 2400
    """Measured at seed 0 (the same VAE and text encoder), held out through `AudioDecoder`: rising / falling
    right in 100% after 2400 steps, 67-83% after 1200; ~2.5 min more CPU. (Chords read 0% after 2400 and
    42-50% after 1200: the VAE + vocoder round trip alone reads 17% of chords right, so chords are the
    vocoder's to fix, not the UNet's; text->audio does not ask for them.)"""
    unet_batch: int = 16
    unet_lr: float = 1e-3
    bank_size: int = 512
    """Training clips encoded once by the trained VAE and drawn from by the UNet's steps."""
    uncond_prob: float = 0.1
    """Share of UNet examples conditioned on the empty caption (classifier-free guidance)."""
    snr_gamma: float | None = 5.0
    """Min-SNR loss weighting (Hang et al. 2023); None for the plain epsilon MSE."""
    eval_steps: int = 20
    eval_guidance: float = 5.0
    eval_seeds: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        scale = 2 ** (len(self.vae_channels) - 1)
        if self.n_mels % scale:
            raise ValueError(f"n_mels={self.n_mels} must be a multiple of the VAE's x{scale}")
        frames = round(self.seconds * SAMPLE_RATE / HOP)
        if frames % scale or frames < max(self.vocoder_frames, self.vae_frames) or self.vae_frames % scale:
            raise ValueError(
                f"seconds={self.seconds} ({frames} frames), vocoder_frames={self.vocoder_frames}, "
                f"vae_frames={self.vae_frames}: the clip's and the VAE crop's frames must be multiples of "
                f"{scale}, and the clip no shorter than either crop"
            )
        if not 0 <= self.uncond_prob < 1:
            raise ValueError(f"uncond_prob={self.uncond_prob} must be in [0, 1)")
        if 2 * self.vocoder_harmonics < self.n_mels:
            raise ValueError(
                f"vocoder_harmonics={self.vocoder_harmonics} must be >= n_mels / 2 = {self.n_mels / 2}: the "
                "synthesiser's conv_pre (4 x harmonics channels) holds two channels per mel bin"
            )
        if self.vocoder_steps < 0:
            raise ValueError(f"vocoder_steps={self.vocoder_steps} must be >= 0 (0: the synthesiser as built)")
        for name in ("vae_steps", "text_steps", "unet_steps", "bank_size", "eval_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def frames(self) -> int:
        return round(self.seconds * SAMPLE_RATE / HOP)

    @property
    def world(self) -> WorldConfig:
        return WorldConfig(seed=self.seed, audio_seconds=self.seconds, sample_rate=SAMPLE_RATE)

    @classmethod
    def reduced(cls, seed: int = 0) -> Self:
        """For tests: each part learns visibly in seconds; the sounds are not yet right."""
        return cls(
            seed=seed,
            vae_channels=(8, 16, 16),
            vae_steps=30,
            vae_batch=4,
            vae_frames=32,
            text_steps=40,
            text_batch=32,
            unet_channels=(16, 16, 32),
            unet_steps=40,
            unet_batch=16,
            bank_size=32,
            eval_steps=3,
            eval_seeds=1,
            progress=False,
        )


# ---------------------------------------------------------------------------------------------------------
# Data: world sounds and AudioLDM's log-mel front end


class LogMel(nn.Module):
    """AudioLDM's log-mel: |STFT| (Hann 1024, hop 160, frames centred by a (1024 - 160) / 2 reflect pad, so
    that N samples give N / 160 frames) through a Slaney mel bank over 0-8 kHz, log of max(., 1e-5).
    Differentiable: the vocoder's loss runs through it."""

    bank: torch.Tensor
    window: torch.Tensor

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer(
            "bank", torch.from_numpy(slaney_bank(n_mels)).float(), persistent=False
        )  # (F, M)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms -> (B, N // HOP, M) log-mel."""
        pad = (N_FFT - HOP) // 2
        padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(padded, N_FFT, HOP, N_FFT, self.window, center=False, return_complex=True)
        return torch.log(torch.clamp(spec.abs().transpose(1, 2) @ self.bank, min=LOG_FLOOR))  # (B, T, M)


def render_sounds(which: Sequence[int], cfg: AudioTrainConfig, rng: random.Random) -> torch.Tensor:
    """(B, N) float waveforms of the world sounds SOUNDS[i] for i in `which`, each freshly drawn."""
    world = cfg.world
    return torch.from_numpy(np.stack([render_audio(SOUNDS[i], world, rng) for i in which]))


def draw_sounds(n: int, cfg: AudioTrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sounds drawn by `gen`: (n, N) waveforms and their SOUNDS indices (n,)."""
    which = torch.randint(len(SOUNDS), (n,), generator=gen)
    rng = random.Random(int(torch.randint(2**31, (1,), generator=gen)))
    return render_sounds(which.tolist(), cfg, rng), which


def with_fillers(text: str, rng: random.Random) -> str:
    """`text` with 1-2 words inserted at random places, each from FILLERS or a random 3-7 letter string
    (which the tokenizer splits into unfamiliar pieces, as it splits a phrasing's unseen words)."""
    words = text.split()
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.5:
            word = rng.choice(FILLERS)
        else:
            word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
        words.insert(rng.randrange(len(words) + 1), word)
    return " ".join(words)


def training_captions(rng: random.Random, copies: int = 3) -> tuple[list[str], list[int]]:
    """Every (sound, phrase, frame), `copies` times: as is, then with random casing, a full stop and
    `with_fillers` words (measured: without them, unseen frame words such as "could you produce ... for
    me" pull a sweep's embedding to a chord's). Captions and their SOUNDS indices."""
    captions, labels = [], []
    for label, sound in enumerate(SOUNDS):
        for phrase in PHRASES[sound]:
            for template in TEMPLATES:
                for k in range(copies):
                    text = template.format(phrase)
                    if k:
                        text = with_fillers(text, rng)
                    if k and rng.random() < 0.5:
                        text = text[0].upper() + text[1:]
                    if k and rng.random() < 0.5:
                        text += "."
                    captions.append(text)
                    labels.append(label)
    return captions, labels


def heldout_captions() -> list[tuple[str, str]]:
    """(world caption, held-out phrasing of it) for every sound and held-out frame."""
    return [(sound, template.format(sound)) for template in HELDOUT_TEMPLATES for sound in SOUNDS]


def build_tokenizer(out_dir: Path) -> RobertaTokenizer:
    """A byte-level BPE in RoBERTa's layout (<s>=0, <pad>=1, </s>=2) trained on the training phrasings, so
    that the world's words are single tokens (unseen words fall back to pieces and bytes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    captions, _ = training_captions(random.Random(0), copies=1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        captions,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(out_dir))  # vocab.json + merges.txt
    return RobertaTokenizer.from_pretrained(out_dir, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


def tokenize(tokenizer: RobertaTokenizer, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 77) ids and attention mask, padded as the pipeline's `_encode_prompt` pads."""
    tokens = tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return tokens.input_ids, tokens.attention_mask


# ---------------------------------------------------------------------------------------------------------
# Components


def build_vae(cfg: AudioTrainConfig) -> AutoencoderKL:
    """The mel VAE: one channel in and out, the (frames, mel bins) log-mel as its picture."""
    return kl_vae(cfg.vae_channels, cfg.latent_channels, cfg.n_mels, in_channels=1)


def build_vocoder(cfg: AudioTrainConfig) -> SpeechT5HifiGan:
    """A one-stage HiFi-GAN: mel frames -> `conv_pre` -> one x160 transposed convolution (kernel 320) ->
    one 1x1 residual block -> `conv_post` -> tanh. `synthesis_init` gives it its weights.

    Why not a trained multi-stage HiFi-GAN: every HiFi-GAN is shift-equivariant by one frame (HOP
    samples), so a constant mel (a steady tone's) gives a HOP-periodic waveform, whose spectrum holds
    only multiples of 100 Hz; a small one trained for minutes on a CPU finds no better and leaves
    buzzing combs (measured: tones read as chords, high beeps as low). This one makes those multiples
    cleanly: an overlap-add synthesiser of the 100 Hz harmonics."""
    harmonics = cfg.vocoder_harmonics
    return SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=cfg.n_mels,
            sampling_rate=SAMPLE_RATE,
            # conv_pre: mel -> 4K channels (the first n_mels used), upsampler: 4K -> 2K (K harmonics, each
            # as + and - so that the leaky ReLU after it passes the carrier undistorted).
            upsample_initial_channel=4 * harmonics,
            upsample_rates=[HOP],
            upsample_kernel_sizes=[2 * HOP],  # Hann windows at 50% overlap sum to one
            resblock_kernel_sizes=[1],
            resblock_dilation_sizes=[[1]],
            normalize_before=False,  # AudioLDM's vocoder reads the raw log-mel
        )
    )


def slaney_bank(n_mels: int) -> np.ndarray:
    """(F, M) the Slaney mel filter bank over 0..8 kHz that `LogMel` applies."""
    return mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )


def mel_centres(n_mels: int) -> np.ndarray:
    """(M,) Hz: the peak of each filter of the Slaney mel bank (`LogMel`'s)."""
    return np.argmax(slaney_bank(n_mels), axis=0) * SAMPLE_RATE / N_FFT


@torch.no_grad()
def synthesis_init(vocoder: SpeechT5HifiGan, gain: float = 0.1, threshold: float = 1.0) -> SpeechT5HifiGan:
    """Weights that make `build_vocoder`'s HiFi-GAN an overlap-add synthesiser:

    1. `conv_pre` (centre tap): each mel bin's log level minus the mean of its neighbours', a local
       contrast that is 0 on the -11.5 floor and strongest in the bin nearest a note (so a tone drives one
       harmonic more than the next), less `threshold` (nats), rectified (the leaky ReLU, undone exactly by
       a second, negated channel), so that a generated mel's ripple on the floor stays silent;
    2. the upsampler: bin m adds its level x a Hann-windowed sine at the 100 Hz harmonic nearest its
       centre, to a + and a - channel. Sines at multiples of 100 Hz are in phase from one 160-sample frame
       to the next, so the windows add up to a steady tone;
    3. the residual block is zero (identity); `conv_post` (centre tap) sums + minus - x `gain`.
    """
    config = vocoder.config
    n_mels, harmonics = config.model_in_dim, config.upsample_initial_channel // 4
    for param in vocoder.parameters():
        param.zero_()
    pre = vocoder.conv_pre.weight  # (4K, M, 7)
    centre = pre.shape[-1] // 2
    for m in range(n_mels):
        # Channels m and M + m: the contrast minus `threshold`, and its negative.
        pre[m, m, centre], pre[n_mels + m, m, centre] = 1.0, -1.0
        for n in (m - 1, m + 1):
            if 0 <= n < n_mels:
                pre[m, n, centre], pre[n_mels + m, n, centre] = -0.5, 0.5
    bias = vocoder.get_parameter("conv_pre.bias")
    bias[:n_mels], bias[n_mels : 2 * n_mels] = -threshold, threshold
    up = vocoder.get_parameter("upsampler.0.weight")  # (4K, 2K, 2 x HOP): in, out, taps
    taps = torch.arange(up.shape[-1], dtype=torch.float64)
    window = torch.hann_window(up.shape[-1], periodic=True, dtype=torch.float64)
    pad = (up.shape[-1] - HOP) // 2  # the transposed convolution's padding: tap `pad` is the frame's start
    for m, hz in enumerate(mel_centres(n_mels)):
        k = round(hz / 100.0)
        if 1 <= k <= harmonics:
            carrier = (window * torch.sin(2 * math.pi * 100.0 * k * (taps - pad) / SAMPLE_RATE)).float()
            # leaky_relu(z, 0.1) + 0.1 x leaky_relu(-z, 0.1) = 0.99 x relu(z): the amplitude is exactly
            # 0 below the threshold (a leak would hum every harmonic at once).
            for channel, share in ((m, 1 / 0.99), (n_mels + m, 0.1 / 0.99)):
                up[channel, 2 * (k - 1)] += share * carrier
                up[channel, 2 * k - 1] -= share * carrier
    post = vocoder.conv_post.weight  # (1, 2K, 7)
    post[0, 0::2, post.shape[-1] // 2] = gain
    post[0, 1::2, post.shape[-1] // 2] = -gain
    return vocoder


def build_text_encoder(cfg: AudioTrainConfig, vocab_size: int) -> ClapTextModelWithProjection:
    return clap_text_encoder(vocab_size, cfg.text_hidden, cfg.cond_dim)


def build_unet(cfg: AudioTrainConfig) -> UNet2DConditionModel:
    # AudioLDM has no text cross-attention: the CLAP vector enters as a class embedding concatenated to the
    # time embedding, and the attention blocks self-attend (cross_attention_dim == block width). Attention
    # only at the coarsest level (13 x 2 latent positions at 3 levels: cheap). A sweep needs the depth:
    # where in the clip a frame is shows only through the padding at the clip's ends, and at 2 levels the
    # middle frames' receptive field reaches neither end (measured: wavering sweeps read as chords).
    levels = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.frames // 2 ** (len(cfg.vae_channels) - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        cross_attention_dim=cfg.unet_channels,
        attention_head_dim=2,  # diffusers' name for the number of heads
        norm_num_groups=8,
        class_embed_type="simple_projection",
        projection_class_embeddings_input_dim=cfg.cond_dim,
        class_embeddings_concat=True,
    )


def build_scheduler() -> DDIMScheduler:
    """AudioLDM's noise schedule (the tiny profile's, `nextgpt.tiny.diffusion.build_tiny_audioldm`)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
