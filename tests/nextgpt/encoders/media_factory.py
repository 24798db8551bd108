"""Test media made on the fly with PIL / soundfile / PyAV; nothing is downloaded."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import cast

import av
import numpy as np
import soundfile as sf
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sine(seconds: float, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """float32 (channels, n) sine; channel c has amplitude 0.5 / (c + 1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = np.sin(2 * np.pi * freq * t)
    return np.stack([wave * 0.5 / (c + 1) for c in range(channels)]).astype(np.float32)


def wav_bytes(wave: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.T, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def av_audio_bytes(wave: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode (C, n) float audio with PyAV, e.g. ("mp3", "libmp3lame") or ("ogg", "libopus")."""
    buf = io.BytesIO()
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    with av.open(buf, mode="w", format=container) as out:
        stream = cast(AudioStream, out.add_stream(codec, rate=rate, layout=layout))
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, wave.shape[1], frame_size):
            chunk = np.ascontiguousarray(wave[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = pts
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def video_bytes(frames: np.ndarray, fps: int = 10, container: str = "mp4", codec: str = "libx264") -> bytes:
    """Encode uint8 (T, H, W, 3) RGB frames near-losslessly (qp 0) so colours survive the round trip."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = cast(VideoStream, out.add_stream(codec, rate=Fraction(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": "0", "preset": "ultrafast"}
        else:
            stream.options = {"crf": "4", "b:v": "0"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


LEVEL_STEP = 5


def indexed_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Grey frames whose level encodes their index: frame i is LEVEL_STEP * i everywhere."""
    levels = (np.arange(n) * LEVEL_STEP).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def frame_index(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / LEVEL_STEP))
