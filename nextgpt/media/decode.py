"""Media bytes -> arrays (PIL image, float waveform, RGB frames).

Everything a user sends passes through here first, so every failure becomes `InvalidInput` with a message
that says what was wrong and which formats are accepted; no decoder exception leaks out. Audio and video
both go through PyAV (FFmpeg), one code path for every container, so WAV/FLAC/MP3/OGG behave the same.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from nextgpt.errors import InvalidInput
from nextgpt.types import Modality

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; larger is a decompression bomb or a mistake
MAX_IMAGE_SIDE = 16384
AUDIO_CONTAINERS = {"wav", "flac", "mp3", "ogg"}
VIDEO_CONTAINERS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm"}
MAX_AUDIO_SECONDS = 600.0
MAX_VIDEO_DECODED_BYTES = 2 * 1024**3  # RGB frames kept in memory
MAX_VIDEO_SECONDS = 600.0

_MIME_MODALITY: dict[str, Modality] = {
    "image/png": "image",
    "image/jpeg": "image",
    "image/jpg": "image",
    "image/webp": "image",
    "audio/wav": "audio",
    "audio/wave": "audio",
    "audio/x-wav": "audio",
    "audio/vnd.wave": "audio",
    "audio/flac": "audio",
    "audio/x-flac": "audio",
    "audio/mpeg": "audio",
    "audio/mp3": "audio",
    "audio/ogg": "audio",
    "video/mp4": "video",
    "video/webm": "video",
}
_ACCEPTED = {
    "image": "PNG, JPEG or WebP",
    "audio": "WAV, FLAC, MP3 or OGG",
    "video": "MP4 or WebM",
}


def accepted_mime_types() -> list[str]:
    return sorted(_MIME_MODALITY)


def sniff_modality(mime_type: str) -> Modality:
    """Map a MIME type ("audio/wav", "video/mp4; codecs=avc1") to the modality that reads it."""
    base = mime_type.split(";", 1)[0].strip().lower()
    modality = _MIME_MODALITY.get(base)
    if modality is None:
        raise InvalidInput(
            f"unsupported media type {mime_type!r}; accepted: {', '.join(accepted_mime_types())}"
        )
    return modality


def check_media_item(modality: Modality, data: bytes, mime_type: str, max_bytes: int, where: str) -> None:
    """Cheap checks before any decoding: non-empty, within the size limit, and a MIME type that is
    accepted and agrees with the declared modality. Messages start with `where` (e.g. "inputs[2]")."""
    if not data:
        raise InvalidInput(f"{where}: empty {modality} (0 bytes); send the whole file's bytes")
    if len(data) > max_bytes:
        raise InvalidInput(
            f"{where}: the {modality} is {len(data)} bytes, over the limit of {max_bytes} bytes "
            "(max_media_bytes); send a smaller file"
        )
    try:
        sniffed = sniff_modality(mime_type)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    if sniffed != modality:
        raise InvalidInput(
            f"{where}: MIME type {mime_type!r} is {sniffed}, but the item is sent as {modality}; "
            f"fix the modality or send {modality} data with a {modality}/* type"
        )


# --- images -----------------------------------------------------------------------------------------


def read_image(data: bytes) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to an RGB image (alpha dropped, as ImageBind's `convert("RGB")`)."""
    if not data:
        raise InvalidInput(f"empty image; send {_ACCEPTED['image']} bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between 1x and 2x its own pixel limit; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
                raise InvalidInput(
                    f"image is {width}x{height} pixels, above the limit of {MAX_IMAGE_PIXELS} pixels "
                    f"(sides up to {MAX_IMAGE_SIDE}); downscale it before sending"
                )
            img.load()
            return img.convert("RGB")
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"image rejected as a decompression bomb ({exc}); downscale it") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise InvalidInput(
            f"could not decode image ({type(exc).__name__}: {exc}); send a valid {_ACCEPTED['image']} file"
        ) from exc


# --- audio ------------------------------------------------------------------------------------------


def _container_names(container: av.container.InputContainer) -> set[str]:
    return set(container.format.name.split(","))


def read_audio(data: bytes, sample_rate: int = 16000) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/MP3/OGG bytes to float32 (channels, samples) at `sample_rate`, channels kept.

    FFmpeg's resampler (via `av.AudioResampler`) replaces torchaudio's sinc resampler, so audio that is
    not already at `sample_rate` differs slightly from the reference ImageBind loader.
    """
    if not data:
        raise InvalidInput(f"empty audio; send {_ACCEPTED['audio']} bytes")
    try:
        return _read_audio(data, sample_rate)
    except InvalidInput:
        raise
    except Exception as exc:  # av.FFmpegError and friends
        raise InvalidInput(
            f"could not decode audio ({type(exc).__name__}: {exc}); send a valid {_ACCEPTED['audio']} file"
        ) from exc


def _read_audio(data: bytes, sample_rate: int) -> tuple[np.ndarray, int]:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not _container_names(container) & AUDIO_CONTAINERS:
            raise InvalidInput(
                f"audio container {container.format.name!r} is not accepted; send {_ACCEPTED['audio']}"
            )
        if not container.streams.audio:
            raise InvalidInput(f"no audio stream found; send {_ACCEPTED['audio']}")
        stream = container.streams.audio[0]
        resampler: av.AudioResampler | None = None
        chunks: list[np.ndarray] = []
        n_samples = 0
        max_samples = int(MAX_AUDIO_SECONDS * sample_rate)
        for frame in container.decode(stream):
            if resampler is None:  # planar float keeps channels apart: to_ndarray() is (C, n)
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                n_samples += out.samples
            if n_samples > max_samples:
                raise InvalidInput(f"audio is longer than {MAX_AUDIO_SECONDS:.0f} s; trim it before sending")
        if resampler is not None:
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray())
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise InvalidInput(f"audio holds no samples; send a non-empty {_ACCEPTED['audio']} file")
    wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)  # (C, N)
    if not np.isfinite(wave).all():
        raise InvalidInput("audio holds NaN or infinite samples")
    return np.ascontiguousarray(wave), sample_rate


# --- video ------------------------------------------------------------------------------------------


@dataclass
class VideoClip:
    """Decoded RGB frames and their timing.

    `duration` follows decord (which ImageBind's reference loader uses): frame count / average fps.
    """

    frames: np.ndarray
    """uint8, (T, H, W, 3) RGB."""
    fps: float
    """Average frame rate of the stream."""
    duration: float
    """Seconds: T / fps."""
    timestamps: np.ndarray
    """float64, (T,) presentation time of each frame in seconds, relative to the first frame."""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def read_video(data: bytes, max_decoded_bytes: int = MAX_VIDEO_DECODED_BYTES) -> VideoClip:
    """Decode MP4/WebM bytes to all RGB frames. The audio track, if any, is ignored (as in ImageBind)."""
    if not data:
        raise InvalidInput(f"empty video; send {_ACCEPTED['video']} bytes")
    try:
        return _read_video(data, max_decoded_bytes)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(
            f"could not decode video ({type(exc).__name__}: {exc}); send a valid {_ACCEPTED['video']} file"
        ) from exc


def _read_video(data: bytes, max_decoded_bytes: int) -> VideoClip:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not _container_names(container) & VIDEO_CONTAINERS:
            raise InvalidInput(
                f"video container {container.format.name!r} is not accepted; send {_ACCEPTED['video']}"
            )
        if not container.streams.video:
            raise InvalidInput(f"no video stream found; send {_ACCEPTED['video']}")
        stream = container.streams.video[0]
        rate: Fraction | None = stream.average_rate or stream.guessed_rate
        frames: list[np.ndarray] = []
        times: list[float] = []
        used = 0
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            used += rgb.nbytes
            if used > max_decoded_bytes:
                raise InvalidInput(
                    f"video too large to decode: more than {max_decoded_bytes // 2**20} MiB of RGB frames "
                    f"({rgb.shape[1]}x{rgb.shape[0]}); send a shorter or smaller video"
                )
            frames.append(rgb)
            times.append(float(frame.time) if frame.time is not None else float("nan"))
    if not frames:
        raise InvalidInput(f"video holds no frames; send a non-empty {_ACCEPTED['video']} file")
    stamps = np.asarray(times, dtype=np.float64)
    if np.isnan(stamps).any():
        stamps = np.arange(len(frames), dtype=np.float64) / float(rate or 25)
    stamps = stamps - stamps[0]
    if rate:
        fps = float(rate)
    elif len(frames) > 1 and stamps[-1] > 0:
        fps = (len(frames) - 1) / float(stamps[-1])
    else:
        fps = 25.0  # a single frame without a rate: any value gives the same sampling
    duration = len(frames) / fps
    if duration > MAX_VIDEO_SECONDS:
        raise InvalidInput(f"video is longer than {MAX_VIDEO_SECONDS:.0f} s; trim it before sending")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InvalidInput(f"video changes frame size mid-stream ({sorted(shapes)}); re-encode it")
    return VideoClip(frames=np.stack(frames), fps=fps, duration=duration, timestamps=stamps)
