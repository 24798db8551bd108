"""Media bytes -> arrays (PIL image, float waveform, RGB frames).

Everything a user sends passes through here first, so every failure becomes `InvalidInput` with a message
that says what was wrong and which formats are accepted; no decoder exception leaks out. Audio and video
both go through PyAV (FFmpeg), one code path for every container, so WAV/FLAC/MP3/OGG behave the same.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from nextgpt.errors import InvalidInput
from nextgpt.media import budgets as _budgets
from nextgpt.media.budgets import MediaBudgets
from nextgpt.types import Modality

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = _budgets.MAX_IMAGE_PIXELS
"""Pixel limit of `read_image` when no budgets are passed (read at call time, so tests may patch it)."""
MAX_IMAGE_SIDE = _budgets.MAX_IMAGE_SIDE
AUDIO_CONTAINERS = {"wav", "flac", "mp3", "ogg"}
VIDEO_CONTAINERS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm"}
MAX_VIDEO_DECODED_BYTES = 2 * 1024**3
"""RGB bytes of the frames `read_video` keeps (all frames when nothing selects; the sampled ones else)."""

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


def read_image(data: bytes, budgets: MediaBudgets | None = None) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to an RGB image (alpha dropped, as ImageBind's `convert("RGB")`).

    The size comes from the header (`Image.open` decodes no pixel), so an image over
    `budgets.max_image_pixels` is refused before it costs any memory: a decompression bomb never decodes.
    """
    if not data:
        raise InvalidInput(f"empty image; send {_ACCEPTED['image']} bytes")
    max_pixels = MAX_IMAGE_PIXELS if budgets is None else budgets.max_image_pixels
    try:
        with warnings.catch_warnings():
            # PIL warns (rather than raises) between 1x and 2x its own pixel limit; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
            check_image_size(*img.size, max_pixels)
            img.load()
            return img.convert("RGB")
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput("the image is rejected as a decompression bomb; downscale it") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _undecodable("image", exc) from exc


def check_image_size(width: int, height: int, max_pixels: int) -> None:
    """Raise InvalidInput when a `width` x `height` image is over the pixel budget or absurdly long."""
    if width * height > max_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels "
            "(max_image_pixels); downscale it before sending"
        )
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InvalidInput(
            f"image is {width}x{height} pixels, a side over the limit of {MAX_IMAGE_SIDE}; "
            "crop or downscale it before sending"
        )


# --- audio ------------------------------------------------------------------------------------------


def _container_names(container: av.container.InputContainer) -> set[str]:
    return set(container.format.name.split(","))


def read_audio(
    data: bytes, sample_rate: int = 16000, budgets: MediaBudgets | None = None
) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/MP3/OGG bytes to float32 (channels, samples) at `sample_rate`, channels kept.

    Audio over `budgets.max_audio_seconds` is refused from its header when the header says so, else as
    soon as the decoded samples pass the limit. FFmpeg's resampler (via `av.AudioResampler`) replaces
    torchaudio's sinc resampler, so audio that is not already at `sample_rate` differs slightly from the
    reference ImageBind loader.
    """
    if not data:
        raise InvalidInput(f"empty audio; send {_ACCEPTED['audio']} bytes")
    try:
        return _read_audio(data, sample_rate, budgets or _budgets.DEFAULT_BUDGETS)
    except InvalidInput:
        raise
    except Exception as exc:  # av.FFmpegError and friends
        raise _undecodable("audio", exc) from exc


def _too_long(kind: str, seconds: float, limit: float, setting: str) -> InvalidInput:
    return InvalidInput(
        f"{kind} is {seconds:.1f} s long, over the limit of {limit:g} s ({setting}); trim it before sending"
    )


def _header_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    """Duration the file claims (stream first, then container), or None when it does not say."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _read_audio(data: bytes, sample_rate: int, budgets: MediaBudgets) -> tuple[np.ndarray, int]:
    limit = budgets.max_audio_seconds
    with av.open(io.BytesIO(data), mode="r") as container:
        if not _container_names(container) & AUDIO_CONTAINERS:
            raise InvalidInput(
                f"audio container {container.format.name!r} is not accepted; send {_ACCEPTED['audio']}"
            )
        if not container.streams.audio:
            raise InvalidInput(f"no audio stream found; send {_ACCEPTED['audio']}")
        stream = container.streams.audio[0]
        # 1. what the header says, before any sample is decoded
        claimed = _header_seconds(container, stream)
        if claimed is not None and claimed > limit:
            raise _too_long("audio", claimed, limit, "max_audio_seconds")
        channels = stream.codec_context.channels
        if channels > budgets.max_audio_channels:
            raise InvalidInput(
                f"audio has {channels} channels, over the limit of {budgets.max_audio_channels} "
                "(max_audio_channels); mix it down before sending"
            )
        # 2. decode, counting samples: a header may lie
        resampler: av.AudioResampler | None = None
        chunks: list[np.ndarray] = []
        n_samples = 0
        max_samples = int(limit * sample_rate)
        for frame in container.decode(stream):
            if resampler is None:  # planar float keeps channels apart: to_ndarray() is (C, n)
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                n_samples += out.samples
            if n_samples > max_samples:
                raise _too_long("audio", n_samples / sample_rate, limit, "max_audio_seconds")
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

FrameSelector = Callable[[int, float, float], Iterable[int]]
"""(frames in the stream, fps, duration in seconds) -> indices of the frames a consumer will read."""


@dataclass
class VideoClip:
    """Decoded RGB frames and their timing: every frame of the stream, or only the selected ones.

    `duration` follows decord (which ImageBind's reference loader uses): frame count / average fps.
    """

    frames: np.ndarray
    """uint8, (K, H, W, 3) RGB: the stream's frames `frame_indices`, in order (all T when None)."""
    fps: float
    """Average frame rate of the stream."""
    duration: float
    """Seconds: T / fps."""
    timestamps: np.ndarray
    """float64, (K,) presentation time of each kept frame in seconds, relative to the stream's first."""
    frame_indices: tuple[int, ...] | None = None
    """Stream indices of `frames` (ascending), when `read_video` kept only selected frames."""
    total_frames: int | None = None
    """T, frames in the stream; None means `frames` holds them all."""

    @property
    def num_frames(self) -> int:
        """T, frames in the whole stream (not only those kept)."""
        return int(self.frames.shape[0]) if self.total_frames is None else self.total_frames

    def frame(self, index: int) -> np.ndarray:
        """Stream frame `index` as (H, W, 3); it must be one of the kept frames."""
        if self.frame_indices is None:
            return self.frames[index]
        return self.frames[self.frame_indices.index(index)]


def read_video(
    data: bytes,
    max_decoded_bytes: int = MAX_VIDEO_DECODED_BYTES,
    *,
    budgets: MediaBudgets | None = None,
    select: FrameSelector | None = None,
) -> VideoClip:
    """Decode MP4/WebM bytes to RGB frames. The audio track, if any, is ignored (as in ImageBind).

    With `select`, only the frames it names are converted to RGB and kept, and the decoder seeks to the
    keyframe before each of them instead of decoding the whole stream: a 600-frame 720p video costs
    10 frames of memory, not 600. Frame count, size and duration are checked against `budgets` from
    the container (packets demuxed, nothing decoded) before the first frame is decoded.
    """
    if not data:
        raise InvalidInput(f"empty video; send {_ACCEPTED['video']} bytes")
    try:
        return _read_video(data, max_decoded_bytes, budgets or _budgets.DEFAULT_BUDGETS, select)
    except InvalidInput:
        raise
    except Exception as exc:
        raise _undecodable("video", exc) from exc


@dataclass
class _Index:
    """What demuxing (no decoding) tells about a video stream."""

    pts: list[int] | None
    """Presentation timestamps of the frames in presentation order; None when some packet has none."""
    keyframes: list[int]
    """pts of the keyframes, ascending."""
    count: int
    """Frames in the stream (one per non-empty packet)."""


def _index_stream(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _Index:
    pts: list[int] = []
    keyframes: list[int] = []
    count, complete = 0, True
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        count += 1
        if packet.pts is None:
            complete = False
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
    return _Index(sorted(pts) if complete else None, sorted(keyframes), count)


class _Decoder:
    """Decodes frames, counts the pixels decoded against the budget, keeps the wanted ones as RGB."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        budgets: MediaBudgets,
    ) -> None:
        self.container, self.stream, self.budgets = container, stream, budgets
        self.decoded_pixels = 0

    def frames(self) -> Iterable[av.VideoFrame]:
        for frame in self.container.decode(self.stream):
            pixels = frame.width * frame.height
            if pixels > self.budgets.max_video_frame_pixels:
                raise _frame_too_big(frame.width, frame.height, self.budgets)
            self.decoded_pixels += pixels
            if self.decoded_pixels > self.budgets.max_video_decoded_pixels:
                raise InvalidInput(
                    f"video needs more than {self.budgets.max_video_decoded_pixels} decoded pixels "
                    f"(max_video_decoded_pixels; {frame.width}x{frame.height} frames, few keyframes); "
                    "send a shorter or smaller video, or one with more keyframes"
                )
            yield frame


def _frame_too_big(width: int, height: int, budgets: MediaBudgets) -> InvalidInput:
    return InvalidInput(
        f"video frames are {width}x{height} = {width * height} pixels, over the limit of "
        f"{budgets.max_video_frame_pixels} pixels per frame (max_video_frame_pixels); downscale it"
    )


def _open_video(data: bytes) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    container = av.open(io.BytesIO(data), mode="r")
    try:
        if not _container_names(container) & VIDEO_CONTAINERS:
            raise InvalidInput(
                f"video container {container.format.name!r} is not accepted; send {_ACCEPTED['video']}"
            )
        if not container.streams.video:
            raise InvalidInput(f"no video stream found; send {_ACCEPTED['video']}")
    except BaseException:
        container.close()
        raise
    return container, container.streams.video[0]


def _read_video(
    data: bytes, max_decoded_bytes: int, budgets: MediaBudgets, select: FrameSelector | None
) -> VideoClip:
    container, stream = _open_video(data)
    with container:
        # 1. budgets from the header and the packets, before decoding a frame
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > budgets.max_video_frame_pixels:
            raise _frame_too_big(width, height, budgets)
        index = _index_stream(container, stream)
        if index.count == 0:
            raise InvalidInput(f"video holds no frames; send a non-empty {_ACCEPTED['video']} file")
        rate: Fraction | None = stream.average_rate or stream.guessed_rate
        time_base = stream.time_base
        fps = _fps(rate, index, time_base)
        count = index.count
        if count / fps > budgets.max_video_seconds:
            raise _too_long("video", count / fps, budgets.max_video_seconds, "max_video_seconds")
        wanted = _wanted(select, count, fps)
        _check_kept_bytes(len(wanted), width, height, max_decoded_bytes)
        # 2. decode, seeking to the keyframe before each wanted frame when timestamps allow it
        decoder = _Decoder(container, stream, budgets)
        kept = _decode_seeking(decoder, index, wanted) if select is not None else None
        if kept is not None:
            frames = _to_rgb(kept)
    if kept is None:  # every frame, no timestamps, or frames and packets disagree: decode in order
        container, stream = _open_video(data)
        with container:
            kept, decoded = _decode_in_order(_Decoder(container, stream, budgets), wanted)
        if len(kept) < len(wanted) and decoded > 0:  # fewer frames than packets: use the real count
            count = decoded
            wanted = _wanted(select, count, fps)
            container, stream = _open_video(data)
            with container:
                kept, _ = _decode_in_order(_Decoder(container, stream, budgets), wanted)
        frames = _to_rgb(kept)
    if not kept:
        raise InvalidInput(f"video holds no frames; send a non-empty {_ACCEPTED['video']} file")
    order = sorted(kept)
    times = [kept[i].time for i in order]
    first = float(index.pts[0] * time_base) if index.pts and time_base else None
    if first is None or any(t is None for t in times):
        stamps = np.asarray(order, dtype=np.float64) / fps
    else:
        stamps = np.asarray(times, dtype=np.float64) - first
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InvalidInput(f"video changes frame size mid-stream ({sorted(shapes)}); re-encode it")
    everything = select is None and order == list(range(count))
    return VideoClip(
        frames=np.stack(frames),
        fps=fps,
        duration=count / fps,
        timestamps=stamps,
        frame_indices=None if everything else tuple(order),
        total_frames=None if everything else count,
    )


def _to_rgb(kept: dict[int, av.VideoFrame]) -> list[np.ndarray]:
    return [kept[i].to_ndarray(format="rgb24") for i in sorted(kept)]  # (H, W, 3) each


def _fps(rate: Fraction | None, index: _Index, time_base: Fraction | None) -> float:
    if rate:
        return float(rate)
    if index.pts is not None and len(index.pts) > 1 and time_base and index.pts[-1] > index.pts[0]:
        return (len(index.pts) - 1) / float((index.pts[-1] - index.pts[0]) * time_base)
    return 25.0  # a single frame without a rate: any value gives the same sampling


def _wanted(select: FrameSelector | None, count: int, fps: float) -> list[int]:
    if select is None:
        return list(range(count))
    return sorted({min(max(int(i), 0), count - 1) for i in select(count, fps, count / fps)})


def _check_kept_bytes(n_frames: int, width: int, height: int, max_decoded_bytes: int) -> None:
    if n_frames * width * height * 3 > max_decoded_bytes:
        raise InvalidInput(
            f"video too large to decode: {n_frames} frames of {width}x{height} are more than "
            f"{max_decoded_bytes // 2**20} MiB of RGB frames; send a shorter or smaller video"
        )


def _decode_seeking(decoder: _Decoder, index: _Index, wanted: list[int]) -> dict[int, av.VideoFrame] | None:
    """Frames `wanted` (stream indices), seeking to the keyframe before each one unless decoding on from
    the last frame is shorter. None when the packets gave no timestamps, or a decoded frame's timestamp
    is not one the packets had (the caller then decodes in order)."""
    if index.pts is None:
        return None
    pts = index.pts
    position = {p: i for i, p in enumerate(pts)}
    want = set(wanted)
    kept: dict[int, av.VideoFrame] = {}
    current: int | None = None  # pts of the last decoded frame
    for target in wanted:
        if target in kept:
            continue
        target_pts = pts[target]
        before = [k for k in index.keyframes if k <= target_pts]
        keyframe = before[-1] if before else pts[0]
        if current is None or current < keyframe or current > target_pts:
            decoder.container.seek(keyframe, stream=decoder.stream, backward=True)
        for frame in decoder.frames():
            if frame.pts is None or frame.pts not in position:
                return None
            current = frame.pts
            i = position[frame.pts]
            if i in want:
                kept.setdefault(i, frame)
            if frame.pts >= target_pts:
                break
        if target not in kept:
            return None
    return kept


def _decode_in_order(decoder: _Decoder, wanted: list[int]) -> tuple[dict[int, av.VideoFrame], int]:
    """Frames `wanted`, counting decoded frames from the start; stops after the last wanted one."""
    want = set(wanted)
    last = wanted[-1] if wanted else -1
    kept: dict[int, av.VideoFrame] = {}
    count = 0
    for i, frame in enumerate(decoder.frames()):
        count = i + 1
        if i in want:
            kept[i] = frame
        if i >= last and len(kept) == len(want):
            break
    return kept, count


def _undecodable(kind: str, exc: BaseException) -> InvalidInput:
    """The client's error for a medium its library could not read. The library's own text stays in the
    log: it may hold Python reprs or paths ("cannot identify image file <_io.BytesIO object at 0x...>")."""
    logger.info("could not decode %s: %s: %s", kind, type(exc).__name__, exc)
    return InvalidInput(f"could not decode the {kind}: it is corrupt or not a {_ACCEPTED[kind]} file")
