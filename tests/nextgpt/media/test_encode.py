"""Media encoding: round trips, odd sizes, and byte-identical output for identical input."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from nextgpt.media.encode import encode_mp4, encode_png, encode_wav, rgb_to_yuv420p, to_uint8

RNG = np.random.default_rng(0)


def _decode_mp4(data: bytes) -> tuple[av.video.stream.VideoStream, np.ndarray]:
    container = av.open(io.BytesIO(data))
    stream = container.streams.video[0]
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return stream, frames


def test_png_round_trip_uint8() -> None:
    pixels = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    data = encode_png(pixels)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_png_from_float_pil_and_gray() -> None:
    pixels = RNG.random((8, 8, 3)).astype(np.float32)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
    np.testing.assert_array_equal(decoded, to_uint8(pixels))
    image = Image.new("RGB", (5, 7), (10, 20, 30))
    assert Image.open(io.BytesIO(encode_png(image))).getpixel((0, 0)) == (10, 20, 30)
    assert Image.open(io.BytesIO(encode_png(np.zeros((4, 4), np.uint8)))).mode == "L"


def test_png_is_deterministic_and_has_no_metadata() -> None:
    pixels = RNG.random((16, 16, 3)).astype(np.float32)
    data = encode_png(pixels)
    assert data == encode_png(pixels.copy())
    assert b"tEXt" not in data and b"tIME" not in data


def test_png_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2, 3), np.int32))


def test_wav_round_trip() -> None:
    wave = (0.5 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    data = encode_wav(wave, sample_rate=16000)
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    np.testing.assert_allclose(decoded, wave, atol=1 / 32767)
    assert data == encode_wav(wave.copy(), sample_rate=16000)


def test_wav_clips_stereo_and_rate() -> None:
    wave = np.array([[2.0, -3.0], [0.25, 0.0]], np.float32)  # (N, C)
    decoded, rate = sf.read(io.BytesIO(encode_wav(wave, sample_rate=22050)), dtype="float32")
    assert rate == 22050 and decoded.shape == (2, 2)
    assert decoded.max() <= 1.0 and decoded.min() >= -1.0
    with pytest.raises(ValueError):
        encode_wav(np.zeros((1, 2, 3), np.float32))


@pytest.mark.parametrize("size", [(32, 48), (31, 47)])
def test_mp4_round_trip(size: tuple[int, int]) -> None:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([xx * 5, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    frames = np.stack([np.roll(frame, t, axis=1) for t in range(6)])  # (T, H, W, 3)
    data = encode_mp4(frames, fps=8)
    stream, decoded = _decode_mp4(data)
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert float(stream.average_rate) == 8
    even_h, even_w = h + h % 2, w + w % 2
    assert decoded.shape == (6, even_h, even_w, 3)
    assert np.abs(decoded[:, :h, :w].astype(int) - frames).mean() < 4  # lossy, but close


def test_mp4_is_deterministic() -> None:
    """Other encodes in between used to flip x264's macroblock-tree decisions about 1 time in 100."""
    frames = np.random.default_rng(5).random((4, 128, 96, 3)).astype(np.float32)
    first = encode_mp4(frames, fps=4)
    for i in range(40):
        if i % 3 == 0:
            encode_mp4(RNG.random((8, 64, 64, 3)).astype(np.float32), fps=8)
        assert encode_mp4(frames.copy(), fps=4) == first, f"encode {i} differs"
    assert float(_decode_mp4(first)[0].average_rate) == 4


def test_mp4_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((1, 8, 8, 3), np.uint8), fps=0)


def test_yuv_conversion_of_primaries() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert rgb_to_yuv420p(rgb).tolist() == [[16, 16], [16, 16], [128, 128]]
    white = np.full((2, 2, 3), 255, np.uint8)
    assert rgb_to_yuv420p(white).tolist() == [[235, 235], [235, 235], [128, 128]]
