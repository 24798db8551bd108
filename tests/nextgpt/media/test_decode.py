"""Media decoding: every accepted format decodes, every bad input is `InvalidInput` with a useful message."""

import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from nextgpt.errors import InvalidInput
from nextgpt.media.decode import read_audio, read_image, read_video, sniff_modality
from tests.nextgpt.encoders.media_factory import (
    av_audio_bytes,
    frame_index,
    indexed_frames,
    png_bytes,
    sine,
    video_bytes,
    wav_bytes,
)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_read_image_formats(fmt: str) -> None:
    img = Image.new("RGB", (20, 10), (10, 200, 30))
    out = read_image(png_bytes(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_read_image_drops_alpha_and_palette() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert read_image(png_bytes(rgba)).getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (4, 4), 3)
    assert read_image(png_bytes(pal)).mode == "RGB"


def test_read_image_rejects_huge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nextgpt.media.decode.MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InvalidInput, match="above the limit"):
        read_image(png_bytes(Image.new("RGB", (20, 10))))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, b"%PDF-1.4 not an image", b"GIF89a" + bytes(100)],
)
def test_read_image_errors(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="PNG, JPEG or WebP"):
        read_image(data)


def test_read_image_rejects_gif() -> None:
    with pytest.raises(InvalidInput, match="PNG, JPEG or WebP"):
        read_image(png_bytes(Image.new("RGB", (4, 4)), "GIF"))


@pytest.mark.parametrize(
    "encode",
    [
        lambda w, r: wav_bytes(w, r),
        lambda w, r: wav_bytes(w, r, "WAV", "PCM_16"),
        lambda w, r: wav_bytes(w, r, "FLAC"),
        lambda w, r: av_audio_bytes(w, r, "mp3", "libmp3lame"),
        lambda w, r: av_audio_bytes(w, r, "ogg", "libopus"),
    ],
    ids=["wav-float", "wav-pcm16", "flac", "mp3", "ogg-opus"],
)
def test_read_audio_formats_resample_keep_channels(encode) -> None:
    rate = 48000
    wave = sine(1.0, rate, freq=440.0, channels=2)
    out, sr = read_audio(encode(wave, rate), 16000)
    assert sr == 16000 and out.dtype == np.float32 and out.shape[0] == 2
    assert abs(out.shape[1] - 16000) <= 1200  # codecs add priming / padding
    assert np.abs(out[0]).max() == pytest.approx(0.5, abs=0.05)
    assert np.abs(out[1]).max() == pytest.approx(0.25, abs=0.05)
    # the tone survives resampling: its spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(out[0]))
    assert np.fft.rfftfreq(out.shape[1], 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=3)


def test_read_audio_16k_wav_is_exact() -> None:
    """At 16 kHz nothing is resampled: float WAV passes through, PCM16 is scaled by 1/32768 (torchaudio)."""
    wave = sine(0.5, 16000, channels=2)
    out, _ = read_audio(wav_bytes(wave, 16000, "WAV", "FLOAT"))
    np.testing.assert_array_equal(out, wave)
    pcm = wav_bytes(wave, 16000, "WAV", "PCM_16")
    out, _ = read_audio(pcm)
    np.testing.assert_array_equal(out, sf.read(io.BytesIO(pcm), dtype="float32")[0].T)


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(5000),
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(8),
        b"",
    ],
    ids=["random", "truncated-header", "empty"],
)
def test_read_audio_errors(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="WAV, FLAC, MP3 or OGG"):
        read_audio(data)


def test_read_audio_rejects_video_container() -> None:
    with pytest.raises(InvalidInput, match="not accepted|no audio stream"):
        read_audio(video_bytes(indexed_frames(3)))


@pytest.mark.parametrize("container,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_read_video(container: str, codec: str) -> None:
    clip = read_video(video_bytes(indexed_frames(12), fps=8, container=container, codec=codec))
    assert clip.frames.shape == (12, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(8.0)
    assert clip.duration == pytest.approx(1.5)
    np.testing.assert_allclose(clip.timestamps, np.arange(12) / 8, atol=1e-3)
    assert [frame_index(f) for f in clip.frames] == list(range(12))


def test_read_video_errors() -> None:
    good = video_bytes(indexed_frames(20))
    with pytest.raises(InvalidInput, match="MP4 or WebM"):
        read_video(good[: len(good) // 2])  # moov atom lost
    with pytest.raises(InvalidInput, match="MP4 or WebM"):
        read_video(np.random.default_rng(1).bytes(4000))
    with pytest.raises(InvalidInput, match="not accepted"):
        read_video(wav_bytes(sine(0.2)))


def test_read_video_memory_cap() -> None:
    with pytest.raises(InvalidInput, match="too large"):
        read_video(video_bytes(indexed_frames(5)), max_decoded_bytes=20_000)


def test_sniff_modality() -> None:
    assert sniff_modality("image/png") == "image"
    assert sniff_modality("Audio/WAV") == "audio"
    assert sniff_modality("video/mp4; codecs=avc1") == "video"
    with pytest.raises(InvalidInput, match="unsupported media type 'application/pdf'.*image/png"):
        sniff_modality("application/pdf")
