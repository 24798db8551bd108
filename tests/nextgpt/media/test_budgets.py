"""Input budgets: what a medium decodes to is bounded, and a bomb is refused before it decodes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import wave
import zlib
from fractions import Fraction
from typing import cast

import av
import numpy as np
import pytest
from av.video.stream import VideoStream
from PIL import Image

from nextgpt.encoders import preprocess as pp
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.media import decode
from nextgpt.media.budgets import MediaBudgets
from nextgpt.types import MediaItem
from tests.nextgpt.encoders.media_factory import indexed_frames, png_bytes, sine, video_bytes, wav_bytes


def png_bomb(width: int = 8192, height: int = 8192) -> bytes:
    """A valid PNG header declaring `width` x `height` RGB with a one-row IDAT: decoding it would need
    width x height x 3 bytes, reading its header needs nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * (1 + 3 * width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def u8_wav(seconds: float, rate: int = 8000) -> bytes:
    """Silent 8-bit mono WAV: 8 KB per second, so a long file stays small."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(b"\x80" * int(seconds * rate))
    return buf.getvalue()


def gop_video(n: int, fps: int = 30, gop: int = 30, size: tuple[int, int] = (64, 48)) -> bytes:
    """`n` indexed frames (each frame's index readable from its pixels), a keyframe every `gop`."""
    frames = indexed_frames(n)
    if (frames.shape[2], frames.shape[1]) != size:
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size)) for f in frames])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = cast(VideoStream, out.add_stream("libx264", rate=Fraction(fps)))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0", "preset": "ultrafast", "g": str(gop)}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# --- images -------------------------------------------------------------------------------------------


def test_png_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_bomb()
    assert len(data) < 64 * 1024
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the bomb was decoded"))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            decode.read_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "8192x8192 = 67108864 pixels" in message and "16777216" in message
    assert "(max_image_pixels)" in message and "downscale" in message
    assert peak < 5 * 2**20  # decoding would take 192 MiB


def test_image_budget_is_a_setting() -> None:
    data = png_bytes(Image.new("RGB", (40, 30)))
    assert decode.read_image(data, MediaBudgets(max_image_pixels=1200)).size == (40, 30)
    with pytest.raises(
        InvalidInput, match=r"40x30 = 1200 pixels, above the limit of 1199 .*max_image_pixels"
    ):
        decode.read_image(data, MediaBudgets(max_image_pixels=1199))


def test_normal_images_pass_the_default_budget() -> None:
    for size in ((512, 512), (4000, 3000)):  # a 12 MP photo
        assert decode.read_image(png_bytes(Image.new("RGB", size))).size == size


# --- audio --------------------------------------------------------------------------------------------


def test_too_long_audio_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av.container.InputContainer, "decode", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(
        InvalidInput, match=r"audio is 301\.0 s long, over the limit of 300 s \(max_audio_seconds\)"
    ):
        decode.read_audio(u8_wav(301.0))


def test_audio_budget_is_a_setting() -> None:
    data = wav_bytes(sine(2.0))
    wave_, _ = decode.read_audio(data, budgets=MediaBudgets(max_audio_seconds=2.5))
    assert wave_.shape == (1, 32000)
    with pytest.raises(InvalidInput, match=r"over the limit of 1.5 s \(max_audio_seconds\)"):
        decode.read_audio(data, budgets=MediaBudgets(max_audio_seconds=1.5))
    with pytest.raises(InvalidInput, match=r"3 channels, over the limit of 2 \(max_audio_channels\)"):
        decode.read_audio(wav_bytes(sine(0.5, channels=3)), budgets=MediaBudgets(max_audio_channels=2))


def test_normal_audio_passes_the_default_budget() -> None:
    wave_, rate = decode.read_audio(wav_bytes(sine(10.0)))
    assert wave_.shape == (1, 160000) and rate == 16000


# --- video --------------------------------------------------------------------------------------------


class _Counted:
    """Counts the frames `read_video`'s decoder produces."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        original = decode._Decoder.frames

        def frames(decoder: decode._Decoder):  # type: ignore[no-untyped-def]
            for frame in original(decoder):
                self.frames += 1
                yield frame

        monkeypatch.setattr(decode._Decoder, "frames", frames)


def test_long_video_decodes_only_the_sampled_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    data = gop_video(600, fps=30, gop=30)
    full = decode.read_video(data)  # the reference: every frame
    counted = _Counted(monkeypatch)
    clip = decode.read_video(data, select=pp.sampled_frames)
    wanted = pp.sampled_frames(600, 30.0, 20.0)
    assert clip.num_frames == 600 and clip.duration == pytest.approx(20.0)
    assert clip.frame_indices == tuple(wanted) and clip.frames.shape == (len(wanted), 48, 64, 3)
    assert len(wanted) == 10 and counted.frames < 600 / 2  # seeks to the keyframe before each
    np.testing.assert_allclose(clip.timestamps, full.timestamps[wanted])
    assert np.array_equal(clip.frames, full.frames[wanted])
    assert pp.preprocess_video(clip).equal(pp.preprocess_video(full))


def test_sampled_video_without_keyframes_still_bounded() -> None:
    data = gop_video(120, fps=10, gop=1000)  # one keyframe: the decoder must run on, not seek back
    clip = decode.read_video(data, select=pp.sampled_frames)
    full = decode.read_video(data)
    assert clip.frames.shape[0] == 10
    assert pp.preprocess_video(clip).equal(pp.preprocess_video(full))


def test_video_frame_pixels_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = video_bytes(indexed_frames(3))  # 64 x 48
    counted = _Counted(monkeypatch)
    with pytest.raises(
        InvalidInput, match=r"64x48 = 3072 pixels, over the limit of 3000 .*max_video_frame_pixels"
    ):
        decode.read_video(data, budgets=MediaBudgets(max_video_frame_pixels=3000))
    assert counted.frames == 0


def test_video_decoded_pixels_and_seconds_budgets() -> None:
    data = gop_video(60, fps=10, gop=60)
    with pytest.raises(InvalidInput, match=r"max_video_decoded_pixels"):
        decode.read_video(data, budgets=MediaBudgets(max_video_decoded_pixels=20 * 64 * 48))
    with pytest.raises(
        InvalidInput, match=r"video is 6\.0 s long, over the limit of 5 s \(max_video_seconds\)"
    ):
        decode.read_video(data, budgets=MediaBudgets(max_video_seconds=5.0))


def test_load_and_preprocess_uses_the_budgets() -> None:
    item = MediaItem("video", gop_video(40, fps=10, gop=10), "video/mp4")
    assert pp.load_and_preprocess(item).shape == (15, 3, 2, 224, 224)
    with pytest.raises(InvalidInput, match="max_video_seconds"):
        pp.load_and_preprocess(item, MediaBudgets(max_video_seconds=1.0))
    bomb = MediaItem("image", png_bomb(), "image/png")
    with pytest.raises(InvalidInput, match="max_image_pixels"):
        pp.load_and_preprocess(bomb)


def test_budgets_validate_themselves() -> None:
    with pytest.raises(ConfigError, match="max_image_pixels=0"):
        MediaBudgets(max_image_pixels=0)
    with pytest.raises(ConfigError, match="max_video_seconds=-1"):
        MediaBudgets(max_video_seconds=-1)
