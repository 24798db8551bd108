"""What a sound of the shapes world is, read from its spectrum (no learned model).

- sound: a sweep when the spectral peak moves steadily (a line through its track in octaves per second
  spans at least MIN_SWEEP_OCTAVES and fits well); else a chord when the long-window spectrum has two or
  more notes (strong peaks 2 or more semitones apart), else a tone;
- sweep: rising or falling, the sign of that line;
- pitch: low or high, the strongest frequency against PITCH_SPLIT_HZ (the world captions it for tones;
  a chord's is its strongest note, a sweep's the median of its track);
- chord: major or minor, from the interval between the two lowest notes (4 or 3 semitones);
- beeping: the share of 16 ms frames whose strongest frequency is far quieter than when loud (a world
  beep is on half the time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nextgpt.training.world_eval.image import UNKNOWN

LOW_TONE_HZ = (150.0, 300.0)
HIGH_TONE_HZ = (900.0, 1500.0)
"""The world's pitch ranges (`world_media.render_audio` draws a low and a high frequency from them)."""
PITCH_SPLIT_HZ = math.sqrt(LOW_TONE_HZ[1] * HIGH_TONE_HZ[0])
"""Low below, high above: the geometric middle of the gap between the ranges (~520 Hz)."""
MIN_SWEEP_OCTAVES = 0.5
"""Travel of the peak over the clip that makes a sweep (world: log2(900/300) = 1.6 octaves at least)."""
MIN_SWEEP_FIT = 0.6
"""Share of the peak track's variance the line must explain (a chord's peak jumps between its notes)."""
CHORD_PEAK = 0.3
"""A second spectral peak at this fraction of the strongest makes a chord (a world chord's are equal)."""
NOTE_GAP = 2.0
"""Semitones between spectral peaks below which they are one note (a world chord's closest: 3)."""
BEEP_SHARE = 0.25
"""Share of quiet 16 ms frames above which a sound is beeping (world beeps: 0.44-0.65, also at 0 dB SNR
or after a 32-bin mel round trip; steady sounds: 0-0.1)."""
BEEP_MEDIAN = 7
"""Frames (8 ms apart) of the median filter on the level: shorter than a world beep's 125 ms gap."""
LOWEST_NOTE_HZ = 50.0
"""Frequencies below are no note (DC offset, hum); the world's lowest is 150 Hz."""
SILENCE = 1e-4
"""Peak amplitude below which a waveform is silent."""


@dataclass
class AudioReading:
    """A sound's attributes; each score is in [0, 1], 0 when the label is UNKNOWN."""

    sound: str
    """tone, chord or sweep."""
    pitch: str
    """low or high."""
    sweep: str
    """rising or falling (UNKNOWN for a sound that is not a sweep)."""
    chord: str
    """major or minor (UNKNOWN for a sound that is not a chord)."""
    beeping: str
    """beeping or steady."""
    sound_score: float
    pitch_score: float
    frequency_hz: float
    """The strongest frequency (tones, chords) or the track's median (sweeps); 0 when unknown."""

    def attributes(self) -> dict[str, str]:
        return {
            "sound": self.sound,
            "pitch": self.pitch,
            "sweep": self.sweep,
            "chord": self.chord,
            "beeping": self.beeping,
        }


def spectrogram(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(frames, n_fft // 2 + 1) magnitudes of Hann-windowed frames."""
    count = 1 + (len(wave) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(count)[:, None]  # (frames, n_fft)
    return np.abs(np.fft.rfft(wave[index] * np.hanning(n_fft), axis=1))


def peak_frequency(spectrum: np.ndarray, bin_hz: float) -> float:
    """The strongest bin above LOWEST_NOTE_HZ of a magnitude spectrum, refined by a parabola through it
    and its neighbours."""
    first = int(LOWEST_NOTE_HZ / bin_hz) + 1
    k = int(np.argmax(spectrum[first:-1])) + first
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    offset = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c < 0 else 0.0
    return (k + float(np.clip(offset, -0.5, 0.5))) * bin_hz


def notes(spectrum: np.ndarray, bin_hz: float, share: float) -> list[float]:
    """Frequencies (ascending) of the notes in a magnitude spectrum: its local maxima above 50 Hz at
    `share` of the strongest or more, where maxima less than NOTE_GAP semitones from the previous one
    belong to the same note (the strongest counts). A world chord's notes are 3 or more apart; a tone
    smeared by a codec or a vocoder is one note."""
    s = spectrum.copy()
    s[: int(LOWEST_NOTE_HZ / bin_hz) + 1] = 0.0
    local = (s[1:-1] > s[:-2]) & (s[1:-1] >= s[2:]) & (s[1:-1] >= share * s.max())
    found: list[tuple[float, float]] = []  # (frequency, magnitude) per note
    previous = 0.0
    for k in np.nonzero(local)[0] + 1:
        hz, level = float(k * bin_hz), float(s[k])
        if found and 12 * math.log2(hz / previous) < NOTE_GAP:
            if level > found[-1][1]:
                found[-1] = (hz, level)
        else:
            found.append((hz, level))
        previous = hz
    return [hz for hz, _ in found]


def beep_share(wave: np.ndarray, sample_rate: int) -> float:
    """Share of 16 ms frames (8 ms apart) whose strongest bin above 50 Hz, median-filtered over 7 frames,
    is below half its 90th percentile. The strongest bin follows a tone or a sweep and is ~10 dB above
    the loudest bin of white noise at equal power, so noise in a beep's gaps stays below half its
    level; the median keeps a world beep's 125 ms gaps and drops the short dips of a rough resynthesis
    (Griffin-Lim's, up to 0.44 of the frames unfiltered, 0.1 filtered)."""
    n_fft = 1 << max(5, round(math.log2(sample_rate * 0.016)))
    frames = spectrogram(wave, n_fft, n_fft // 2)
    level = frames[:, int(LOWEST_NOTE_HZ * n_fft / sample_rate) + 1 :].max(axis=1)  # (frames,)
    if len(level) >= BEEP_MEDIAN:
        padded = np.pad(level, BEEP_MEDIAN // 2, mode="edge")
        level = np.median(np.lib.stride_tricks.sliding_window_view(padded, BEEP_MEDIAN), axis=1)
    return float(np.mean(level < 0.5 * np.percentile(level, 90)))


def check_audio(wave: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """A mono float64 waveform (channels first (C, N) or last (N, C) are averaged), or None when it is
    not one: not 1-D/2-D, not finite, silent, or shorter than 0.1 s, or a rate below 4 kHz."""
    try:
        array = np.asarray(wave, dtype=np.float64)
    except (TypeError, ValueError):  # ragged or not numbers
        return None
    if array.ndim == 2:
        array = array.mean(axis=0 if array.shape[0] < array.shape[1] else 1)
    if array.ndim != 1 or sample_rate < 4000 or len(array) < sample_rate // 10:
        return None
    if not np.isfinite(array).all():
        return None
    array = array - array.mean()  # a DC offset is no sound
    return array if np.abs(array).max() >= SILENCE else None


def classify_audio(wave: np.ndarray, sample_rate: int) -> AudioReading:
    """Sound kind, pitch, sweep direction, chord quality and beeping of a world sound; UNKNOWN where it
    cannot tell (silence, too short, not a waveform)."""
    mono = check_audio(wave, sample_rate)
    if mono is None:
        return AudioReading(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, 0.0, 0.0, 0.0)
    # 1. the peak track: 64 ms frames (16 Hz bins at 16 kHz), only the loud ones (beeps have gaps).
    n_fft = 1 << max(6, round(math.log2(sample_rate * 0.064)))
    frames = spectrogram(mono, n_fft, n_fft // 4)
    energy = frames.sum(axis=1)
    loud = energy >= 0.3 * np.percentile(energy, 90)  # a click does not silence the rest
    bin_hz = sample_rate / n_fft
    track = np.log2([peak_frequency(f, bin_hz) for f in frames[loud]])  # (K,) octaves
    times = np.nonzero(loud)[0] * (n_fft // 4) / sample_rate
    sweep, travel, fit = UNKNOWN, 0.0, 0.0
    if len(track) >= 3 and np.ptp(times) > 0:
        slope, intercept = np.polyfit(times, track, 1)
        residual = track - (slope * times + intercept)
        fit = 1.0 - float(residual.var() / max(track.var(), 1e-12))
        travel = float(slope * np.ptp(times))
    # 2. the long-window spectrum (0.25 s frames: 4 Hz bins, a minor third at 150 Hz is 28 Hz).
    n_long = min(1 << round(math.log2(sample_rate * 0.256)), 1 << int(math.log2(len(mono))))
    long = spectrogram(mono, n_long, n_long // 2).mean(axis=0)
    long_bin = sample_rate / n_long
    peaks = notes(long, long_bin, CHORD_PEAK)
    chord = UNKNOWN
    if abs(travel) >= MIN_SWEEP_OCTAVES and fit >= MIN_SWEEP_FIT:
        sound = "sweep"
        sweep = "rising" if travel > 0 else "falling"
        frequency = float(2 ** np.median(track))
        sound_score = min(1.0, abs(travel) / (2 * MIN_SWEEP_OCTAVES), fit)
    elif len(peaks) >= 2:
        sound = "chord"
        semitones = 12 * math.log2(peaks[1] / peaks[0])
        chord = "major" if semitones >= 3.5 else "minor"
        frequency = peak_frequency(long, long_bin)
        sound_score = float(min(1.0, len(peaks) / 3))
    else:
        sound = "tone"
        frequency = peak_frequency(long, long_bin)
        sound_score = float(1.0 - min(1.0, abs(travel) / MIN_SWEEP_OCTAVES))
    # Pitch score: distance from the split in octaves, 1 at the world's nearest range edge.
    octaves = math.log2(frequency / PITCH_SPLIT_HZ)
    pitch = "high" if octaves > 0 else "low"
    pitch_score = min(1.0, abs(octaves) / math.log2(HIGH_TONE_HZ[0] / PITCH_SPLIT_HZ))
    beeping = "beeping" if beep_share(mono, sample_rate) > BEEP_SHARE else "steady"
    return AudioReading(sound, pitch, sweep, chord, beeping, sound_score, pitch_score, frequency)
