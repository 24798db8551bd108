"""Arrays -> media bytes (PNG, WAV, MP4), deterministically.

The same array always gives the same bytes: no timestamps, no encoder threads that race, no varying
metadata. Requests with a fixed seed are promised identical output, and caches key on content hashes.
"""

from __future__ import annotations

import io
import logging
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
from PIL import Image

logger = logging.getLogger(__name__)

PNG_MIME = "image/png"
WAV_MIME = "audio/wav"
MP4_MIME = "video/mp4"


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 passes through; floats are read as [0, 1] (diffusers' `output_type="np"`) and rounded."""
    if pixels.dtype == np.uint8:
        return pixels
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"pixels must be uint8 or float in [0, 1], got dtype {pixels.dtype}")
    return (np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """PNG of an image or an (H, W), (H, W, 3) or (H, W, 4) array (uint8, or float in [0, 1])."""
    if isinstance(image, np.ndarray):
        array = to_uint8(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
        image = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    # No pnginfo and no optimize pass: PIL then writes only IHDR/IDAT/IEND, fully determined by pixels.
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def encode_wav(waveform: np.ndarray, sample_rate: int = 16000) -> bytes:
    """16-bit PCM WAV of a float waveform in [-1, 1], shape (N,) mono or (N, C)."""
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform must be (N,) or (N, C), got shape {waveform.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate} must be positive")
    samples = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row / column where one is odd."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB with even H, W -> (..., H * 3 // 2, W) uint8 planar Y, U, V (BT.601,
    limited range), every frame of a clip in one vectorised pass.

    Done in numpy rather than by PyAV/swscale: swscale picks SIMD paths by buffer alignment, so the same
    pixels could convert to different YUV values from call to call, and the MP4 bytes would drift.
    """
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b  # (..., H, W)
    *lead, h, w = r.shape
    # Chroma from the 2x2 block means of RGB (the conversion is linear, so this equals averaging U, V).
    blocks = x.reshape(*lead, h // 2, 2, w // 2, 2, 3).mean(axis=(-4, -2))  # (..., H/2, W/2, 3)
    rb, gb, bb = blocks[..., 0], blocks[..., 1], blocks[..., 2]
    u = 128.0 - 0.148223 * rb - 0.290993 * gb + 0.439216 * bb  # (..., H/2, W/2)
    v = 128.0 + 0.439216 * rb - 0.367788 * gb - 0.071427 * bb
    planes = [np.clip(np.rint(p), 0, 255).astype(np.uint8).reshape(*lead, -1) for p in (y, u, v)]
    return np.concatenate(planes, axis=-1).reshape(*lead, h * 3 // 2, w)  # PyAV's flat yuv420p layout


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """H.264 (libx264, yuv420p) MP4 of (T, H, W, 3) RGB frames (uint8, or float in [0, 1]).

    Odd sizes are padded by one edge pixel to even. Our own colour conversion, one encoder thread and
    bitexact muxing keep the bytes identical from run to run.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got shape {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps={fps} must be positive")
    frames = _even(to_uint8(frames))
    _, height, width, _ = frames.shape
    buf = io.BytesIO()
    # +bitexact: no libavformat version string; creation_time is never set, so no wall-clock time.
    with av.open(buf, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        # Threaded x264 (frame/slice threads, lookahead) can make different decisions run to run. The
        # macroblock tree also did, about once in 100 encodes within one process (measured with x264
        # core 165, reproducible without threads): mbtree=0 removed it in 1200 of 1200 encodes.
        stream.codec_context.options = {
            "threads": "1",
            "preset": "medium",
            "crf": "23",
            "x264-params": "mbtree=0",
        }
        stream.codec_context.thread_count = 1
        for i, yuv in enumerate(rgb_to_yuv420p(frames)):  # (T, H * 3 // 2, W)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed frames
    return buf.getvalue()
