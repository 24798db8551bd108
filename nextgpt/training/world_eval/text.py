"""What a caption or a free-text reply says about the shapes world: which colours, shapes, directions and
sounds it names, in the world's words or common paraphrases ("moves to the left", "going up",
"high-pitched", "ascending", "a violet disc", "against a grey backdrop").

Word lists, not a grammar: a word counts wherever it stands, except after a negation ("not red"), in
a few idioms ("all right", "right away"), and as the start of a motion ("from left to right" moves
right; "from low to high" is a rising sweep). A colour within two words before "background", "backdrop" or
"behind", or after "on"/"against" with no shape word in between, is the background's. Vertical motion
words count both as a direction (video) and as a sweep (audio): the scorer reads the one that the
expected attributes ask for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from nextgpt.training.data.world_media import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SOUNDS

COLOUR_WORDS: dict[str, str] = {
    **{name: name for name in (*COLOURS, *BACKGROUNDS)},
    "violet": "purple",
    "lilac": "purple",
    "magenta": "purple",
    "grey": "gray",
    "crimson": "red",
    "scarlet": "red",
    "navy": "blue",
    "azure": "blue",
    "lime": "green",
    "emerald": "green",
    "golden": "yellow",
    "gold": "yellow",
    "amber": "orange",
    "reddish": "red",
    "greenish": "green",
    "bluish": "blue",
    "yellowish": "yellow",
    "purplish": "purple",
    "orangey": "orange",
    "orangish": "orange",
    "greyish": "gray",
    "grayish": "gray",
}
SHAPE_WORDS: dict[str, str] = {
    **{name: name for name in SHAPES},
    **{f"{name}s": name for name in SHAPES},
    "circular": "circle",
    "round": "circle",
    "disc": "circle",
    "disk": "circle",
    "dot": "circle",
    "ball": "circle",
    "oval": "circle",
    "squared": "square",
    "box": "square",
    "block": "square",
    "rectangle": "square",
    "rectangular": "square",
    "cube": "square",
    "triangular": "triangle",
    "pyramid": "triangle",
    "starry": "star",
    "pentagram": "star",
    "starlike": "star",
}
DIRECTION_WORDS: dict[str, str] = {
    **{name: name for name in DIRECTIONS},
    "leftward": "left",
    "leftwards": "left",
    "rightward": "right",
    "rightwards": "right",
    "westward": "left",
    "eastward": "right",
    "upward": "up",
    "upwards": "up",
    "rising": "up",
    "rises": "up",
    "ascending": "up",
    "ascends": "up",
    "climbing": "up",
    "climbs": "up",
    "downward": "down",
    "downwards": "down",
    "falling": "down",
    "falls": "down",
    "descending": "down",
    "descends": "down",
    "sinking": "down",
    "sinks": "down",
    "dropping": "down",
    "drops": "down",
    "top": "up",
    "bottom": "down",
}
SWEEP_WORDS: dict[str, str] = {
    "up": "rising",
    "upward": "rising",
    "upwards": "rising",
    "rising": "rising",
    "rises": "rising",
    "ascending": "rising",
    "ascends": "rising",
    "climbing": "rising",
    "climbs": "rising",
    "increasing": "rising",
    "down": "falling",
    "downward": "falling",
    "downwards": "falling",
    "falling": "falling",
    "falls": "falling",
    "descending": "falling",
    "descends": "falling",
    "dropping": "falling",
    "drops": "falling",
    "sinking": "falling",
    "decreasing": "falling",
}
PITCH_WORDS: dict[str, str] = {
    "low": "low",
    "lower": "low",
    "deep": "low",
    "bass": "low",
    "lowpitched": "low",
    "high": "high",
    "higher": "high",
    "shrill": "high",
    "treble": "high",
    "highpitched": "high",
}
SOUND_WORDS: dict[str, str] = {
    "tone": "tone",
    "tones": "tone",
    "note": "tone",
    "beep": "tone",
    "beeps": "tone",
    "beeping": "tone",
    "hum": "tone",
    "whistle": "tone",
    "chord": "chord",
    "chords": "chord",
    "triad": "chord",
    "harmony": "chord",
    "sweep": "sweep",
    "sweeps": "sweep",
    "glide": "sweep",
    "gliding": "sweep",
    "chirp": "sweep",
    "glissando": "sweep",
    "siren": "sweep",
    "slide": "sweep",
}
CHORD_WORDS: dict[str, str] = {"major": "major", "minor": "minor"}
BEEP_WORDS: dict[str, str] = {
    "beep": "beeping",
    "beeps": "beeping",
    "beeping": "beeping",
    "pulsing": "beeping",
    "pulsed": "beeping",
    "intermittent": "beeping",
    "steady": "steady",
    "continuous": "steady",
    "constant": "steady",
    "sustained": "steady",
}
NEGATIONS = frozenset({"not", "never", "no", "isnt", "arent", "without", "nor", "neither"})
"""A listed word within two words after one of these does not count ("not red", "no longer up")."""
IDIOMS = frozenset(
    {
        ("all", "right"),
        ("right", "away"),
        ("right", "now"),
        ("thats", "right"),
        ("is", "right"),
        ("youre", "right"),
    }
)
"""Word pairs in which "right" is no direction."""
SOUND_CONTEXT = frozenset(
    {"sound", "sounds", "noise", "audio", "hear", "heard", "listen", "pitch", "pitched", "frequency", "hz"}
    | {"highpitched", "lowpitched"}
)
"""Words that make "high"/"low" a pitch even when no kind of sound is named ("a high-pitched sound")."""
BACKGROUND_NOUNS = frozenset({"background", "backdrop", "backgrounds", "bg", "behind"})
"""Words that make a colour just before them the background's ("white background", "white behind")."""
PLACE_WORDS = frozenset({"on", "against", "over"})


@dataclass
class Mentions:
    """The attribute values a text names, per attribute (sets: a text may name two, which the scorer
    reads as no single answer)."""

    colour: set[str] = field(default_factory=set)
    background: set[str] = field(default_factory=set)
    shape: set[str] = field(default_factory=set)
    direction: set[str] = field(default_factory=set)
    pitch: set[str] = field(default_factory=set)
    sound: set[str] = field(default_factory=set)
    sweep: set[str] = field(default_factory=set)
    chord: set[str] = field(default_factory=set)
    beeping: set[str] = field(default_factory=set)

    def claims(self) -> dict[str, str]:
        """Attribute -> the one value the text names for it; attributes named with two values are
        "ambiguous", unnamed ones are left out, except beeping: a sound described without beeps is
        taken as steady."""
        out = {name: _one(values) for name, values in vars(self).items() if values}
        if self.sound and not self.beeping:
            out["beeping"] = "steady"
        return out


def _one(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else "ambiguous"


def words(text: str) -> list[str]:
    """Lower-case words; apostrophes and hyphens join ("isn't" -> "isnt", "high-pitched" -> "highpitched")."""
    return re.findall(r"[a-z0-9]+", re.sub(r"['\u2019-]", "", text.lower()))


def mentions(text: str) -> Mentions:
    """Which world attributes `text` names (see the module docstring for the rules)."""
    tokens = words(text)
    found = Mentions()
    tables: tuple[tuple[str, Mapping[str, str]], ...] = (
        ("shape", SHAPE_WORDS),
        ("direction", DIRECTION_WORDS),
        ("sweep", SWEEP_WORDS),
        ("pitch", PITCH_WORDS),
        ("sound", SOUND_WORDS),
        ("chord", CHORD_WORDS),
        ("beeping", BEEP_WORDS),
    )
    moved_from: set[str] = set()  # pitches a sound goes from ("from low to high")
    for i, token in enumerate(tokens):
        if NEGATIONS.intersection(tokens[max(0, i - 2) : i]):
            continue
        if token == "right" and any(tuple(tokens[j : j + 2]) in IDIOMS for j in (i - 1, i)):
            continue
        if "from" in tokens[max(0, i - 2) : i] and (token in DIRECTION_WORDS or token in PITCH_WORDS):
            # Where a motion starts is not where it goes: "from left to right" moves right.
            moved_from.update([PITCH_WORDS[token]] if token in PITCH_WORDS else [])
            continue
        if token in COLOUR_WORDS:
            attribute = "background" if _is_background(tokens, i) else "colour"
            getattr(found, attribute).add(COLOUR_WORDS[token])
        for attribute, table in tables:
            if token in table:
                getattr(found, attribute).add(table[token])
    about_sound = bool(found.sound) or bool(SOUND_CONTEXT.intersection(tokens))
    # "high"/"low" only say pitch, and "up"/"rising" a sweep, when the text is about a sound ("a high
    # square" is no pitch, "a triangle moving up" no sweep).
    if not about_sound:
        found.pitch.clear()
        found.sweep.clear()
    elif not (found.shape or found.colour):  # and a sound that rises moves nowhere ("a rising sweep")
        found.direction.clear()
    # "from low to high" is a rising sweep, "from high to low" a falling one.
    if moved_from and found.pitch and found.pitch != moved_from:
        found.sweep.add("rising" if "high" in found.pitch else "falling")
        found.sound = found.sound or {"sweep"}
        found.pitch.clear()  # a sweep spans both
    # A world tone never moves: a sound that rises or falls ("a tone going up") is a sweep.
    if about_sound and found.sound <= {"tone", "sweep"} and found.sweep and not found.beeping:
        found.sound = {"sweep"}
    return found


def _is_background(tokens: list[str], i: int) -> bool:
    """Whether the colour word at `i` is the background's: "white background", "a grey backdrop", "on
    white", "against a black" (no shape word between the place word and the colour)."""
    if BACKGROUND_NOUNS.intersection(tokens[i + 1 : i + 3]):
        return True
    before = tokens[max(0, i - 2) : i]
    places = [j for j, token in enumerate(before) if token in PLACE_WORDS]
    return bool(places) and not any(token in SHAPE_WORDS for token in before[places[-1] + 1 :])


def caption_attributes(caption: str) -> dict[str, str]:
    """The ground-truth attributes of a world caption: an image's colour, shape and background, a
    video's colour, shape and direction, a sound's kind and its pitch and beeping (tones), sweep
    direction (sweeps) or chord quality (chords). Raises ValueError for a caption the world does not
    make."""
    claims = mentions(caption).claims()
    if caption in SOUNDS:
        keys = {
            "tone": ("sound", "pitch", "beeping"),
            "chord": ("sound", "chord"),
            "sweep": ("sound", "sweep"),
        }
        wanted = keys[claims["sound"]]
    elif caption.endswith(" background"):
        wanted = ("colour", "shape", "background")
    elif " moving " in caption:
        wanted = ("colour", "shape", "direction")
    else:
        raise ValueError(f"{caption!r} is no shapes-world caption (image, video or one of {SOUNDS})")
    missing = [key for key in wanted if claims.get(key, "ambiguous") == "ambiguous"]
    if missing:
        raise ValueError(f"{caption!r} does not name one {', '.join(missing)}")
    return {key: claims[key] for key in wanted}
