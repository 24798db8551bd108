"""ImageBind's preprocessing, re-implemented with PIL / numpy / torch only.

The reference (`imagebind.data`) needs torchvision, torchaudio and pytorchvideo, which cannot be installed
next to our CPU torch (design 4). Every step below mirrors one reference call, named in its docstring, so
that the released input projector sees the inputs it was trained on. Known, deliberate differences:
- resampling uses FFmpeg (media.decode) instead of torchaudio's sinc resampler (exact for 16 kHz input);
- clips shorter than one 25 ms fbank frame give all-padding spectrograms (the reference divides by zero).
"""

from __future__ import annotations

import functools
import logging
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nextgpt.errors import InvalidInput
from nextgpt.media import decode
from nextgpt.media.budgets import MediaBudgets
from nextgpt.media.decode import VideoClip
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = "imagebind-ref-1"
"""Bump whenever any output below changes: it is part of the embedding cache key."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224

AUDIO_SAMPLE_RATE = 16000
AUDIO_NUM_MEL_BINS = 128
AUDIO_TARGET_LEN = 204
AUDIO_CLIP_SECONDS = 2
AUDIO_CLIPS = 3
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138

VIDEO_CLIP_SECONDS = 2
VIDEO_CLIPS = 5
VIDEO_FRAMES_PER_CLIP = 2
VIDEO_SPATIAL_CROPS = 3


def _normalize_channels(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[channel_dim] = 3
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(shape)
    return (x - mean) / std


# --- image ------------------------------------------------------------------------------------------


def resize_short_side(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """torchvision `Resize(size, BICUBIC)` on a PIL image: short side -> size, long side truncated."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop_offsets(height: int, width: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """torchvision `CenterCrop` rounding: (top, left) = round((h - size) / 2), round((w - size) / 2)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def preprocess_image(img: Image.Image) -> torch.Tensor:
    """`load_and_transform_vision_data`: resize 224 bicubic, center crop 224, [0, 1], CLIP norm."""
    img = resize_short_side(img.convert("RGB"))
    top, left = center_crop_offsets(img.height, img.width)
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())  # (H, W, 3)
    x = x.permute(2, 0, 1).float().div(255.0)  # (3, H, W)
    return _normalize_channels(x, 0)


# --- clip sampling ----------------------------------------------------------------------------------


def clip_timepoints(duration: float, clip_seconds: int, num_clips: int) -> list[tuple[Fraction, Fraction]]:
    """pytorchvideo `ConstantClipsPerVideoSampler`: `num_clips` equally spaced windows of `clip_seconds`.

    Fractions as in pytorchvideo, so that `int(start * sample_rate)` truncates exactly like the reference.
    Media shorter than one clip give `num_clips` identical windows starting at 0.
    """
    max_start = Fraction(max(duration - clip_seconds, 0))
    step = Fraction(max_start, max(num_clips - 1, 1))
    return [(step * i, step * i + clip_seconds) for i in range(num_clips)]


# --- audio ------------------------------------------------------------------------------------------


def _mel_scale(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def mel_banks(
    num_bins: int, n_fft: int, sample_rate: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Kaldi's triangular mel filters on the mel axis, (num_bins, n_fft // 2 + 1); the Nyquist column
    is zero as in Kaldi/torchaudio."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    n_bins_fft = n_fft // 2
    fft_bin_width = sample_rate / n_fft
    mel_low = _mel_scale(torch.tensor(low_freq, dtype=torch.float64))
    mel_high = _mel_scale(torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)  # (M, 1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel_scale(fft_bin_width * torch.arange(n_bins_fft, dtype=torch.float64)).unsqueeze(0)  # (1, K)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (M, K)
    return F.pad(banks, (0, 1)).float()  # (M, K + 1)


def kaldi_fbank(
    wave: torch.Tensor,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    num_mel_bins: int = AUDIO_NUM_MEL_BINS,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """`torchaudio.compliance.kaldi.fbank` with ImageBind's settings (hanning window, dither 0,
    htk_compat, no energy, remove DC, snip edges, power spectrum, log floored at float32 eps).

    wave: (N,) float32 -> (frames, num_mel_bins); frames = 1 + (N - window) // shift, 0 if N < window.
    """
    wave = wave.to(torch.float32)
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    n_fft = 1 << (window - 1).bit_length()  # round to a power of two
    if wave.numel() < window:
        return torch.zeros(0, num_mel_bins)
    frames = wave.unfold(0, window, shift)  # (T, W), snip_edges: only whole frames
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC offset per frame
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x[-1] := x[0], as Kaldi
    frames = frames - preemphasis * previous
    frames = frames * torch.hann_window(window, periodic=False, dtype=torch.float32)
    spectrum = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (T, n_fft // 2 + 1)
    banks = mel_banks(num_mel_bins, n_fft, float(sample_rate), low_freq, high_freq)  # (M, K + 1)
    mel = spectrum @ banks.T  # (T, M)
    return torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()


def waveform_to_melspec(clip: torch.Tensor, sample_rate: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
    """ImageBind `waveform2melspec` + normalisation: (C, n) clip -> (1, 128, 204).

    Kaldi fbank reads channel 0 only; the mean is already subtracted by the caller."""
    fbank = kaldi_fbank(clip[0], sample_rate).T  # (128, T)
    pad = AUDIO_TARGET_LEN - fbank.shape[1]
    if pad > 0:
        fbank = F.pad(fbank, (0, pad), value=0.0)
    else:
        fbank = fbank[:, :AUDIO_TARGET_LEN]
    return ((fbank - AUDIO_MEAN) / AUDIO_STD).unsqueeze(0)  # (1, 128, 204)


def audio_clip_bounds(num_samples: int, sample_rate: int = AUDIO_SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges [a, b) of the 3 x 2 s clips, cut as `waveform[int(start*sr): int(end*sr)]`."""
    spans = clip_timepoints(num_samples / sample_rate, AUDIO_CLIP_SECONDS, AUDIO_CLIPS)
    return [(int(start * sample_rate), int(end * sample_rate)) for start, end in spans]


def preprocess_audio(
    waveform: np.ndarray | torch.Tensor, sample_rate: int = AUDIO_SAMPLE_RATE
) -> torch.Tensor:
    """`load_and_transform_audio_data`: (C, N) float waveform at 16 kHz -> (3, 1, 128, 204)."""
    if sample_rate != AUDIO_SAMPLE_RATE:
        raise ValueError(f"audio must be resampled to {AUDIO_SAMPLE_RATE} Hz first (got {sample_rate})")
    wave = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).clone()
    if wave.ndim == 1:
        wave = wave.unsqueeze(0)  # (1, N)
    clips = []
    for a, b in audio_clip_bounds(wave.shape[1], sample_rate):
        clip = wave[:, a:b]  # a view, as in the reference:
        # `waveform -= waveform.mean()` there runs in place on the shared buffer, so overlapping clips
        # see the earlier clips' shifts. Kept for bit-compatibility (per-frame DC removal hides most).
        if clip.numel() > 0:
            clip -= clip.mean()
        clips.append(waveform_to_melspec(clip, sample_rate))
    return torch.stack(clips)  # (3, 1, 128, 204)


# --- video ------------------------------------------------------------------------------------------


def uniform_temporal_indices(num_frames: int, num_samples: int) -> torch.Tensor:
    """pytorchvideo `UniformTemporalSubsample`: linspace(0, t - 1, n), clamped, truncated to int."""
    idx = torch.linspace(0, num_frames - 1, num_samples)
    return torch.clamp(idx, 0, num_frames - 1).long()


def video_frame_indices(clip: VideoClip) -> list[list[int]]:
    """Frame indices of every temporal clip: 5 windows of 2 s, 2 frames each (`sample_frame_indices`)."""
    return sample_frame_indices(clip.num_frames, clip.fps, clip.duration)


def sample_frame_indices(total: int, fps: float, duration: float) -> list[list[int]]:
    """Stream indices of the frames ImageBind reads from a `total`-frame video: 5 windows of 2 s, 2 each.

    A window holds the frames decord returns for `get_clip(start, end)`:
    range(ceil(fps * start), min(ceil(fps * end), T)). Windows past the end reuse the last frame.
    Needs only the frame count and rate, so `decode.read_video` can decode just these frames.
    """
    out = []
    for start, end in clip_timepoints(duration, VIDEO_CLIP_SECONDS, VIDEO_CLIPS):
        first = math.ceil(fps * start)
        stop = min(math.ceil(fps * end), total)
        if stop <= first:  # rounding at the very end of the stream; the reference would fail here
            first, stop = min(first, total - 1), min(first, total - 1) + 1
        window = list(range(first, stop))
        out.append([window[i] for i in uniform_temporal_indices(len(window), VIDEO_FRAMES_PER_CLIP).tolist()])
    return out


def sampled_frames(total: int, fps: float, duration: float) -> list[int]:
    """`decode.FrameSelector` of ImageBind: the (at most 10) distinct frames `preprocess_video` reads."""
    return sorted({i for clip in sample_frame_indices(total, fps, duration) for i in clip})


def short_side_scale(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """pytorchvideo `ShortSideScale`: (C, T, H, W) bilinear, align_corners=False, no antialias."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def spatial_crop_offsets(height: int, width: int, size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
    """ImageBind `SpatialCrop(num_crops=3)` / `uniform_crop`: (top, left) of 3 crops.

    Portrait: top, center, bottom. Landscape or square: left, center, right. Center uses ceil."""
    top, left = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
    if height > width:
        return [(0, left), (top, left), (height - size, left)]
    return [(top, 0), (top, left), (top, width - size)]


def preprocess_video(clip: VideoClip) -> torch.Tensor:
    """`load_and_transform_video_data`: -> (15, 3, 2, 224, 224), clip-major, crop-minor."""
    out = []
    for indices in video_frame_indices(clip):
        # only the sampled frames may be in memory (`read_video(select=sampled_frames)`)
        frames = torch.from_numpy(np.stack([clip.frame(i) for i in indices]))  # (2, H, W, 3) uint8
        x = frames.permute(3, 0, 1, 2).float() / 255.0  # (3, 2, H, W)
        x = _normalize_channels(short_side_scale(x), 0)  # (3, 2, h, w)
        for top, left in spatial_crop_offsets(x.shape[2], x.shape[3]):
            out.append(x[:, :, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
    return torch.stack(out)  # (15, 3, 2, 224, 224)


# --- bytes -> model input, within budgets ------------------------------------------------------------


def load_and_preprocess(item: MediaItem, budgets: MediaBudgets | None = None) -> torch.Tensor:
    """Decode one medium within `budgets` and preprocess it for `ImageBindEncoder.encode_batch`.

    image -> (3, 224, 224); audio -> (3, 1, 128, 204); video -> (15, 3, 2, 224, 224). A video decodes
    only the frames ImageBind samples (`sampled_frames`), so its memory does not grow with its length.
    """
    modality = decode.sniff_modality(item.mime_type)
    if modality != item.modality:
        raise InvalidInput(
            f"media type {item.mime_type!r} is {modality}, but the item says {item.modality!r}; "
            "fix the modality or the MIME type"
        )
    if modality == "image":
        return preprocess_image(decode.read_image(item.data, budgets))
    if modality == "audio":
        wave, rate = decode.read_audio(item.data, AUDIO_SAMPLE_RATE, budgets)
        return preprocess_audio(wave, rate)
    return preprocess_video(decode.read_video(item.data, budgets=budgets, select=sampled_frames))
