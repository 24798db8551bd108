"""The shapes-world classifiers, validated on the world's own media: every colour x shape x background
(images), every colour x direction (videos), every sound, each from several seeds, clean and degraded
(noise, blur, JPEG, a downscale, the MP4 / WAV round trip), and the mention parser on paraphrases that
the world's templates never use. Run with -s to see the measured accuracies (docs/training.md quotes
them)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from nextgpt.media.decode import read_audio, read_image, read_video
from nextgpt.media.encode import encode_mp4, encode_png, encode_wav
from nextgpt.media.files import read_media_file
from nextgpt.training.data.synthetic import make_world
from nextgpt.training.data.world_media import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SOUNDS,
    WorldConfig,
    image_caption,
    render_audio,
    render_image,
    render_video,
    video_caption,
)
from nextgpt.training.world_eval import (
    UNKNOWN,
    AudioClip,
    WorldReport,
    caption_attributes,
    classify_audio,
    classify_image,
    classify_video,
    evaluate_world_media,
    mentions,
)
from nextgpt.training.world_eval.audio import HIGH_TONE_HZ, LOW_TONE_HZ
from nextgpt.types import MediaItem, Modality

CFG = WorldConfig()
IMAGE_SEEDS = (0, 1, 2)
AUDIO_SEEDS = (0, 1, 2, 3)
HALF = CFG.image_size // 2
"""The tiny profile decodes 64 x 64 images and video frames, the world's own size; half of it is the
harsher downscale tested here."""


def gaussian_noise(pixels: np.ndarray, rng: np.random.Generator, sigma: float = 15.0) -> np.ndarray:
    return np.clip(pixels + rng.normal(0.0, sigma, pixels.shape), 0, 255).astype(np.uint8)


def blur(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.0)))


def jpeg(pixels: np.ndarray, quality: int = 30) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return np.asarray(read_image(buf.getvalue()))


def downscale(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((HALF, HALF), Image.Resampling.BILINEAR))


def widen(pixels: np.ndarray) -> np.ndarray:
    """A square picture stretched to Zeroscope's 576 x 320 aspect (1.8), at the world's height."""
    return np.asarray(Image.fromarray(pixels).resize((115, 64), Image.Resampling.BICUBIC))


def diffusion_like(pixels: np.ndarray, rng: np.random.Generator, field: float, cast: float) -> np.ndarray:
    """What an undertrained decoder leaves: soft edges, a smooth uneven wash over the picture (an 8 x 8
    field of `field` levels, upsampled), a tint of the whole picture (`cast` levels) and fine noise."""
    h, w = pixels.shape[:2]
    coarse = rng.normal(0.0, field, (3, 8, 8)).astype(np.float32)
    wash = np.stack(
        [np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.Resampling.BICUBIC)) for c in coarse],
        -1,
    )
    soft = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(0.7))).astype(np.float64)
    out = soft + wash + rng.normal(0.0, cast, 3) + rng.normal(0.0, 6.0, pixels.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def specks(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Three dots of 1.5-3 px radius in the shape's own colour (the hardest kind) at random places."""
    out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    away = np.abs(pixels.astype(int) - pixels[0, 0].astype(int)).sum(axis=-1) > 30
    fill = tuple(int(v) for v in np.median(pixels[away], axis=0))
    for x, y, r in zip(rng.uniform(3, 61, 3), rng.uniform(3, 61, 3), rng.uniform(1.5, 3.0, 3), strict=True):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    return np.asarray(out)


def per_frame(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda frames: np.stack([fn(f) for f in frames])


def mp4_round_trip(frames: np.ndarray) -> np.ndarray:
    return read_video(encode_mp4(frames, fps=CFG.video_fps)).frames


def with_snr(wave: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    power = float(np.mean(wave.astype(np.float64) ** 2))
    return wave + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), wave.shape)


def check_bars(report: WorldReport, case: str, bars: dict[str, float]) -> dict[str, float]:
    """Print the accuracies (seen with -s) and check each attribute against its bar (else bars["all"])."""
    accuracy = report.accuracy()
    print(f"\n{case}: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    for name, value in accuracy.items():
        wrong = [item for item in report.items if not item.correct.get(name, True)]
        assert name == "all" or value >= bars.get(name, bars["all"]), (name, wrong[:5])
    return accuracy


# --- images -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_images() -> list[tuple[str, np.ndarray]]:
    """Every colour x shape x background, from each of IMAGE_SEEDS: 216 pictures."""
    out = []
    for seed in IMAGE_SEEDS:
        rng = random.Random(seed)
        for c in COLOURS:
            for s in SHAPES:
                for b in BACKGROUNDS:
                    out.append((image_caption(c, s, b), render_image(c, s, b, CFG.image_size, rng)))
    return out


IMAGE_CASES: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], dict[str, float]]] = {
    "clean (PNG)": (lambda p, r: np.asarray(read_image(encode_png(p))), {"all": 0.99}),
    "noise sigma 15": (gaussian_noise, {"all": 0.99}),
    "blur radius 1": (lambda p, r: blur(p), {"all": 0.99}),
    "noise 10 + blur + JPEG 50": (lambda p, r: jpeg(gaussian_noise(blur(p), r, 10.0), 50), {"all": 0.97}),
    "JPEG quality 30": (lambda p, r: jpeg(p), {"all": 0.99, "shape": 0.95}),
    "downscale to 32": (lambda p, r: downscale(p), {"all": 0.99, "shape": 0.9}),
    "stretched to 576 x 320's aspect": (lambda p, r: widen(p), {"all": 0.99}),
    "three specks in the shape's colour": (specks, {"all": 0.97}),
    "diffusion-like, wash 15 + tint 12": (lambda p, r: diffusion_like(p, r, 15.0, 12.0), {"all": 0.99}),
    "diffusion-like, wash 25 + tint 20": (lambda p, r: diffusion_like(p, r, 25.0, 20.0), {"all": 0.95}),
}
"""Condition -> (degradation, the lowest accuracy accepted: per attribute, "all" for the others)."""


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_classifier_on_world_images(case: str, world_images: list[tuple[str, np.ndarray]]) -> None:
    degrade, bars = IMAGE_CASES[case]
    rng = np.random.default_rng(0)
    report = evaluate_world_media((caption, degrade(pixels, rng)) for caption, pixels in world_images)
    accuracy = check_bars(report, f"image, {case}", bars)
    assert set(accuracy) == {"colour", "shape", "background", "all"}
    assert report.all.total == len(COLOURS) * len(SHAPES) * len(BACKGROUNDS) * len(IMAGE_SEEDS)


# --- videos -----------------------------------------------------------------------------------------


def world_videos(seed: int, every_shape: bool) -> list[tuple[str, np.ndarray]]:
    """Every colour x direction, with every shape (96 videos) or with one shape each, the four in turn
    (24 videos)."""
    rng = random.Random(seed)
    combos = [(c, d) for c in COLOURS for d in DIRECTIONS]
    shapes = [
        SHAPES if every_shape else (SHAPES[(i + i // len(SHAPES)) % len(SHAPES)],) for i in range(len(combos))
    ]
    return [
        (video_caption(c, s, d), render_video(c, s, d, CFG, rng))
        for (c, d), some in zip(combos, shapes, strict=True)
        for s in some
    ]


VIDEO_CASES: dict[str, tuple[int, bool, Callable[[np.ndarray], np.ndarray], dict[str, float]]] = {
    "clean": (0, True, lambda v: v, {"all": 0.95}),
    "MP4 round trip": (1, False, mp4_round_trip, {"all": 0.95}),
    "noise sigma 15 + MP4": (
        2,
        False,
        lambda v: mp4_round_trip(gaussian_noise(v, np.random.default_rng(0))),
        {"all": 0.95},
    ),
    "blur radius 1": (3, False, per_frame(blur), {"all": 0.95}),
    "stretched to 576 x 320's aspect": (5, False, per_frame(widen), {"all": 0.95}),
    "downscale to 32": (4, True, per_frame(downscale), {"all": 0.95, "shape": 0.6}),
}
"""Condition -> (seed, every shape?, degradation, lowest accuracies as for images)."""


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_classifier_on_world_videos(case: str) -> None:
    seed, every_shape, degrade, bars = VIDEO_CASES[case]
    report = evaluate_world_media(
        (caption, degrade(frames)) for caption, frames in world_videos(seed, every_shape)
    )
    accuracy = check_bars(report, f"video, {case}", bars)
    assert set(accuracy) == {"colour", "shape", "direction", "all"}


# --- audio ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_sounds() -> list[tuple[str, np.ndarray]]:
    """Every sound from each of AUDIO_SEEDS: 32 two-second clips."""
    out: list[tuple[str, np.ndarray]] = []
    for seed in AUDIO_SEEDS:
        rng = random.Random(seed)
        out.extend((caption, render_audio(caption, CFG, rng)) for caption in SOUNDS)
    return out


def wav_round_trip(wave: np.ndarray, rate: int) -> AudioClip:
    decoded, decoded_rate = read_audio(encode_wav(wave, CFG.sample_rate), sample_rate=rate)
    return AudioClip(decoded, decoded_rate)


AUDIO_CASES: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], AudioClip], float]] = {
    "clean (WAV)": (lambda w, r: wav_round_trip(w, CFG.sample_rate), 0.99),
    "noise at 10 dB SNR": (lambda w, r: AudioClip(with_snr(w, r, 10.0), CFG.sample_rate), 0.99),
    "noise at 0 dB SNR": (lambda w, r: AudioClip(with_snr(w, r, 0.0), CFG.sample_rate), 0.95),
    "resampled to 22.05 kHz": (lambda w, r: wav_round_trip(w, 22050), 0.99),
    "first half, at 1% loudness": (lambda w, r: AudioClip(0.01 * w[: len(w) // 2], CFG.sample_rate), 0.99),
}
"""Condition -> (degradation, lowest accuracy of every attribute)."""


@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_audio_classifier_on_world_sounds(case: str, world_sounds: list[tuple[str, np.ndarray]]) -> None:
    degrade, bar = AUDIO_CASES[case]
    rng = np.random.default_rng(0)
    report = evaluate_world_media((caption, degrade(wave, rng)) for caption, wave in world_sounds)
    accuracy = check_bars(report, f"audio, {case}", {"all": bar})
    assert set(accuracy) == {"sound", "pitch", "beeping", "chord", "sweep", "all"}


def mel_round_trip(wave: np.ndarray, n_mels: int, iterations: int = 8) -> np.ndarray:
    """`wave` through an n_mels mel spectrogram and back (pseudo-inverse, then Griffin-Lim), the
    information a mel vocoder gets: the tiny AudioLDM's has MEL_BINS = 32, hop 160, at 16 kHz."""
    n_fft, hop, rate = 1024, 160, CFG.sample_rate
    window = np.hanning(n_fft)
    count = 1 + (len(wave) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]  # (frames, n_fft)

    def stft(x: np.ndarray) -> np.ndarray:
        return np.fft.rfft(x[index] * window, axis=1)

    norm = np.zeros(len(wave))
    for start in index[:, 0]:
        norm[start : start + n_fft] += window**2

    def istft(spec: np.ndarray) -> np.ndarray:
        out = np.zeros(len(wave))
        for start, frame in zip(index[:, 0], np.fft.irfft(spec, n=n_fft, axis=1) * window, strict=True):
            out[start : start + n_fft] += frame
        return out / np.maximum(norm, 0.1 * norm.max())

    mel = 2595 * np.log10(1 + np.fft.rfftfreq(n_fft, 1 / rate) / 700)  # (F,) HTK mel of each bin
    centres = np.linspace(0, mel[-1], n_mels + 2)
    filters = np.clip(
        np.minimum(mel[:, None] - centres[None, :-2], centres[None, 2:] - mel[:, None])
        / (centres[1] - centres[0]),
        0,
        None,
    )  # (F, n_mels) triangles
    magnitude = np.clip((np.abs(stft(wave)) @ filters) @ np.linalg.pinv(filters), 0, None)
    spec = magnitude.astype(np.complex128)
    for _ in range(iterations):
        spec = magnitude * np.exp(1j * np.angle(stft(istft(spec))))
    return istft(spec)


def test_tones_and_sweeps_survive_a_32_bin_mel_spectrogram() -> None:
    """What the acceptance asks of text->audio (low vs high tone, rising vs falling sweep), and beeping,
    are still read from what a 32-bin mel vocoder gets. Chord vs tone is not asked: a low tone smears
    over half an octave of neighbouring bins and reads as a chord (see docs/training.md)."""
    rng = random.Random(11)
    pairs: list[tuple[dict[str, str], AudioClip]] = []
    for caption in (
        "a low tone",
        "a high tone",
        "a low beeping tone",
        "a high beeping tone",
        "a rising sweep",
        "a falling sweep",
    ):
        truth = caption_attributes(caption)
        wanted: dict[str, str] = {key: truth[key] for key in ("pitch", "beeping", "sweep") if key in truth}
        pairs.append(
            (wanted, AudioClip(mel_round_trip(render_audio(caption, CFG, rng), 32), CFG.sample_rate))
        )
    check_bars(evaluate_world_media(pairs), "audio, 32-bin mel spectrogram round trip", {"all": 1.0})


def test_pitch_ranges_match_the_world() -> None:
    """LOW_TONE_HZ / HIGH_TONE_HZ copy the ranges of `render_audio`: its tones measure inside them."""
    rng = random.Random(7)
    for caption, (lo, hi) in (("a low tone", LOW_TONE_HZ), ("a high tone", HIGH_TONE_HZ)):
        for _ in range(20):
            hz = classify_audio(render_audio(caption, CFG, rng), CFG.sample_rate).frequency_hz
            assert lo * 0.99 <= hz <= hi * 1.01, (caption, hz)


# --- files on disk, odd input ------------------------------------------------------------------------


def test_world_files_through_media_items(tmp_path: Path) -> None:
    """The files make_world writes, read as MediaItems (the decoders' output type), score fully."""
    make_world(tmp_path, WorldConfig(seed=5, n_images=12, n_videos=4, n_audios=8, n_instructions=0))
    pairs: list[tuple[str, MediaItem]] = []
    layout: tuple[tuple[str, Modality], ...] = (
        ("cc3m", "image"),
        ("webvid", "video"),
        ("audiocaps", "audio"),
    )
    for index, modality in layout:
        for record in json.loads((tmp_path / f"{index}.json").read_text()):
            path = tmp_path / f"{modality}s" / record[f"{modality}_name"]
            pairs.append((record["caption"], read_media_file(path, modality)))
    report = evaluate_world_media(pairs)
    assert report.all.accuracy == 1.0, [i for i in report.items if not all(i.correct.values())]
    assert {item.kind for item in report.items} == {"image", "video", "audio"}
    assert report.to_dict()["counts"]["all"] == {"correct": 24, "total": 24}


def test_odd_input_reads_as_unknown() -> None:
    white = np.full((64, 64, 3), 255, np.uint8)
    for image in (white, np.zeros((0, 0, 3), np.uint8), np.zeros((4, 4, 3)), np.full((32, 32, 3), np.nan)):
        reading = classify_image(image)
        assert reading.shape == UNKNOWN and reading.colour == UNKNOWN
    assert classify_image(white).background == "white"
    assert classify_image(np.ones((64, 64))).shape == UNKNOWN  # grey-scale: read, no shape
    still = np.stack([render_image("red", "circle", "white", 64, random.Random(0))] * 4)
    assert classify_video(still).direction == UNKNOWN and classify_video(still).colour == "red"
    for frames in (np.zeros((0, 64, 64, 3), np.uint8), white, np.stack([white] * 3), [white, white[:32]]):
        assert classify_video(frames).direction == UNKNOWN  # type: ignore[arg-type]
    for wave, rate in (
        (np.zeros(16000), 16000),
        (np.ones(10), 16000),
        (np.ones(16000), 100),
        (np.zeros((2, 3, 4)), 16000),
    ):
        assert classify_audio(wave, rate).sound == UNKNOWN
    stereo = np.stack([render_audio("a high tone", CFG, random.Random(0))] * 2)  # (2, N)
    assert classify_audio(stereo, CFG.sample_rate).pitch == "high"
    assert classify_audio([[0.1, 0.2], [0.3]], CFG.sample_rate).sound == UNKNOWN  # type: ignore[arg-type]
    assert classify_audio(stereo[0] + 0.3, CFG.sample_rate).pitch == "high"  # a DC offset is no low note
    assert classify_image(np.asarray(read_image(encode_png(still[0]))) / 255.0).shape == "circle"  # float
    report = evaluate_world_media([("a rising sweep", MediaItem("audio", b"not a wav", "audio/wav"))])
    assert report.items[0].kind == "undecodable" and report.all.accuracy == 0.0
    with pytest.raises(ValueError, match="AudioClip"):
        evaluate_world_media([("a low tone", np.zeros(100))])


# --- text -------------------------------------------------------------------------------------------


def test_world_captions_parse_to_their_attributes() -> None:
    for c in COLOURS:
        for s in SHAPES:
            for b in BACKGROUNDS:
                assert caption_attributes(image_caption(c, s, b)) == {
                    "colour": c,
                    "shape": s,
                    "background": b,
                }
            for d in DIRECTIONS:
                assert caption_attributes(video_caption(c, s, d)) == {"colour": c, "shape": s, "direction": d}
    assert caption_attributes("a low beeping tone") == {"sound": "tone", "pitch": "low", "beeping": "beeping"}
    assert caption_attributes("a high tone") == {"sound": "tone", "pitch": "high", "beeping": "steady"}
    assert caption_attributes("a minor chord") == {"sound": "chord", "chord": "minor"}
    assert caption_attributes("a falling sweep") == {"sound": "sweep", "sweep": "falling"}
    with pytest.raises(ValueError, match="no shapes-world caption"):
        caption_attributes("an apple")


PARAPHRASES: list[tuple[str, dict[str, str]]] = [
    (
        "I see a violet disc against a grey backdrop.",
        {"colour": "purple", "shape": "circle", "background": "gray"},
    ),
    ("There's a yellow star sitting on black.", {"colour": "yellow", "shape": "star", "background": "black"}),
    (
        "A triangular orange thing, white behind it... on a white background.",
        {"colour": "orange", "shape": "triangle", "background": "white"},
    ),
    ("Green square, black bg", {"colour": "green", "shape": "square", "background": "black"}),
    ("The red ball moves to the left.", {"colour": "red", "shape": "circle", "direction": "left"}),
    ("A blue box going up.", {"colour": "blue", "shape": "square", "direction": "up"}),
    (
        "It is a purple star that travels rightwards across the frame",
        {"colour": "purple", "shape": "star", "direction": "right"},
    ),
    ("An orange triangle descending slowly", {"colour": "orange", "shape": "triangle", "direction": "down"}),
    (
        "That's right: a yellow circle heading right.",
        {"colour": "yellow", "shape": "circle", "direction": "right"},
    ),
    (
        "It is not red, it is a green pyramid drifting downwards",
        {"colour": "green", "shape": "triangle", "direction": "down"},
    ),
    ("A high-pitched beep.", {"sound": "tone", "pitch": "high", "beeping": "beeping"}),
    ("I hear a deep, steady hum.", {"sound": "tone", "pitch": "low", "beeping": "steady"}),
    ("A low-pitched sound.", {"pitch": "low"}),
    ("a continuous note, fairly high", {"sound": "tone", "pitch": "high", "beeping": "steady"}),
    ("The pitch glides upwards.", {"sound": "sweep", "sweep": "rising"}),
    ("A descending chirp.", {"sound": "sweep", "sweep": "falling"}),
    ("A tone that goes down.", {"sound": "sweep", "sweep": "falling"}),
    ("It sounds like an ascending siren", {"sound": "sweep", "sweep": "rising"}),
    ("Three notes at once: a major triad.", {"sound": "chord", "chord": "major"}),
    ("A sad-sounding minor harmony", {"sound": "chord", "chord": "minor"}),
    ("A reddish dot going from left to right", {"colour": "red", "shape": "circle", "direction": "right"}),
    (
        "The bluish block slides from the top to the bottom.",
        {"colour": "blue", "shape": "square", "direction": "down"},
    ),
    ("A tone gliding from high to low", {"sound": "sweep", "sweep": "falling"}),
    ("It goes from a low sound to a high one.", {"sound": "sweep", "sweep": "rising"}),
]


@pytest.mark.parametrize(("text", "expected"), PARAPHRASES)
def test_mentions_read_paraphrases(text: str, expected: dict[str, str]) -> None:
    claims = mentions(text).claims()
    assert {k: claims.get(k) for k in expected} == expected, claims


def test_motion_words_say_sweep_for_sounds_and_direction_for_shapes() -> None:
    assert "sweep" not in mentions("An orange triangle moving up.").claims()
    assert "direction" not in mentions("A rising sweep.").claims()
    assert mentions("A tone going up.").claims()["sweep"] == "rising"
    assert mentions("A blue square moving up.").claims()["direction"] == "up"


def test_text_scoring_wants_one_answer() -> None:
    report = evaluate_world_media(
        [
            ("a red circle on a white background", "A red circle on a white background."),
            ("a red circle on a white background", "It could be a red or a blue circle."),
            ({"colour": "blue", "shape": "star"}, "A blue star."),  # background not asked, not scored
            ("a high tone", "A high square."),  # "high" is no pitch when no sound is named
        ]
    )
    assert [all(item.correct.values()) for item in report.items] == [True, False, True, False]
    assert report.accuracy()["colour"] == pytest.approx(2 / 3)
    assert report.items[1].found["colour"] == "ambiguous"
    assert "pitch" not in report.items[3].found
    assert mentions("a bright red square").colour == {"red"} and not mentions("all right, a dot").direction
