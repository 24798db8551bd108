"""Small readers for the media the decoders return."""

from __future__ import annotations

import io
from dataclasses import dataclass

import av


@dataclass
class VideoInfo:
    codec: str
    fps: float
    frames: int
    width: int
    height: int
    pix_fmt: str


def read_mp4(data: bytes) -> VideoInfo:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return VideoInfo(
            codec=stream.codec_context.name,
            fps=float(stream.average_rate),
            frames=frames,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            pix_fmt=stream.codec_context.pix_fmt,
        )
