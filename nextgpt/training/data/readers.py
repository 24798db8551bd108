"""Readers of the data formats the NExT-GPT community already has, into `CaptionPair` / `Conversation`.

- X-caption pairs (CC3M / WebVid / AudioCaps as NExT-GPT ships them): `[{"caption", "image_name"}]`,
  `video_name`, `audio_name`; a JSON array or JSON lines.
- Conversations with `from`/`value` turns (key `conversations`, or `conversation` as in the T-T+X
  construction scripts): T->T+X, MosIT-style multi-turn and LLaVA. A `<image>` / `<video>` / `<audio>`
  placeholder (any case) in a human turn is an *input*: its file comes from the turn's or the record's
  `image_list` / `image` (LLaVA) / `image_name`..., taken in order. The same placeholder in a gpt turn
  is an *output*: its caption comes from the turn's `outputs: [{"modality", "caption"}]`, or its
  `caption` (+ `output_modality`), or the record's `image_captions` (T-T+X), again in order; the
  placeholder is replaced by the modality's signal-token span text. A gpt turn with `caption` and
  `output_modality` but no placeholder gets the span appended. Record-level input files that no
  placeholder claims go in front of the first human turn (LLaVA's convention).
- Alpaca: `{"instruction", "input", "output"}`.

A record that cannot be used is skipped and counted by reason in the `ReadReport` (missing or unreadable
media, malformed record); reading never raises for one bad record, so one bad file cannot stop training.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import av
from PIL import Image

from nextgpt.llm.signal_tokens import get_layout
from nextgpt.media import decode
from nextgpt.training.data.types import (
    MEDIA_MARKERS,
    CaptionPair,
    Conversation,
    InstructionFormat,
    MediaRef,
    OutputRef,
    ReadReport,
    Turn,
)
from nextgpt.types import MODALITIES, Modality

logger = logging.getLogger(__name__)

Verify = Literal["none", "header", "decode"]
"""How hard to check a media file: existence only; open it and read its header / first frame (cheap,
the default); or decode it completely with `nextgpt.media.decode` (slow, but catches truncation)."""

MEDIA_SUBDIRS: dict[Modality, str] = {"image": "images", "video": "videos", "audio": "audios"}
PLACEHOLDER = re.compile(r"<(image|video|audio)>", re.IGNORECASE)
ROLES: dict[str, Literal["user", "assistant"]] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
MISSING = "missing media file"
UNREADABLE = "unreadable media"
BAD = "bad record"
NO_FILE = "input placeholder without a file"
NO_CAPTION = "output without a caption"


class BadRecord(ValueError):
    """One record cannot be used; `reason` is the ReadReport key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --- files and media --------------------------------------------------------------------------------


def iter_records(path: Path, report: ReadReport) -> Iterator[tuple[int, Any]]:
    """(index, record) of a JSON array or a JSON-lines file. A bad line of JSON lines is counted and
    skipped; a file that is no JSON at all raises, naming the file (that is a setup error to fix)."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: not valid JSON ({exc}); fix the file or write it as JSON lines"
            ) from exc
        yield from enumerate(records)
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as exc:
            logger.debug("%s line %d: %s", path, i + 1, exc)
            report.skip(BAD)


def resolve_media(name: str, media_dir: Path, modality: Modality) -> Path:
    """`media_dir/name`, else `media_dir/images/name` (the community layout); the first if neither exists."""
    direct = media_dir / name
    if direct.exists():
        return direct
    nested = media_dir / MEDIA_SUBDIRS[modality] / name
    return nested if nested.exists() else direct


def check_media(path: Path, modality: Modality, verify: Verify = "header") -> str | None:
    """Why `path` cannot be used as `modality` (a ReadReport reason), or None when it can."""
    if not path.is_file():
        return MISSING
    if verify == "none":
        return None
    try:
        data = path.read_bytes()
        if verify == "decode":
            readers: dict[Modality, Callable[[bytes], object]] = {
                "image": decode.read_image,
                "audio": decode.read_audio,
                "video": decode.read_video,
            }
            readers[modality](data)
        else:
            _probe(data, modality)
    except Exception as exc:  # any decoder failure means "skip this file", never a crash
        logger.debug("%s: unreadable %s (%s)", path, modality, exc)
        return UNREADABLE
    return None


def _probe(data: bytes, modality: Modality) -> None:
    """Header-level checks: the format is one we decode, and the first frame / chunk decodes."""
    if not data:
        raise ValueError("empty file")
    if modality == "image":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=decode.IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > decode.MAX_IMAGE_PIXELS:
                    raise ValueError(f"{width}x{height} pixels is over the limit")
                img.verify()  # PNG: walks every chunk and checks CRCs without decoding pixels
        return
    accepted = decode.AUDIO_CONTAINERS if modality == "audio" else decode.VIDEO_CONTAINERS
    with av.open(io.BytesIO(data), mode="r") as container:
        if not set(container.format.name.split(",")) & accepted:
            raise ValueError(f"container {container.format.name!r} is not a {modality} format we read")
        streams = container.streams.audio if modality == "audio" else container.streams.video
        if not streams:
            raise ValueError(f"no {modality} stream")
        next(iter(container.decode(streams[0])))  # StopIteration when the stream holds nothing


class _MediaChecker:
    """check_media with a cache: instruction sets reuse the same file many times."""

    def __init__(self, verify: Verify) -> None:
        self.verify = verify
        self._seen: dict[tuple[Path, Modality], str | None] = {}

    def __call__(self, path: Path, modality: Modality) -> None:
        key = (path, modality)
        if key not in self._seen:
            self._seen[key] = check_media(path, modality, self.verify)
        reason = self._seen[key]
        if reason is not None:
            raise BadRecord(reason, f"{modality} {path}: {reason}")


def _log_summary(path: Path, what: str, report: ReadReport) -> None:
    if report.skipped:
        logger.warning("%s: %s %s", path, what, report.summary())
    else:
        logger.info("%s: %s %s", path, what, report.summary())


# --- X-caption pairs --------------------------------------------------------------------------------


def _pair_modality(record: dict[str, Any], modality: Modality | None) -> tuple[Modality, str]:
    for m in (modality,) if modality else MODALITIES:
        for key in (f"{m}_name", m, f"{m}_path"):
            if isinstance(record.get(key), str) and record[key]:
                return m, record[key]
    raise BadRecord(BAD, f"no {modality or 'image/video/audio'}_name field")


def read_caption_pairs(
    json_path: str | Path,
    media_dir: str | Path | None = None,
    modality: Modality | None = None,
    *,
    verify: Verify = "header",
) -> tuple[list[CaptionPair], ReadReport]:
    """CC3M / WebVid / AudioCaps style pairs. `media_dir` defaults to the JSON's folder (names are looked
    up there and in its images/videos/audios subfolder); `modality` defaults to the record's name key.
    A record with a list of captions gives one pair per caption."""
    json_path = Path(json_path)
    base = Path(media_dir) if media_dir is not None else json_path.parent
    report = ReadReport()
    check = _MediaChecker(verify)
    pairs: list[CaptionPair] = []
    for i, record in iter_records(json_path, report):
        try:
            if not isinstance(record, dict):
                raise BadRecord(BAD, "not an object")
            m, name = _pair_modality(record, modality)
            captions = record.get("caption", record.get("captions"))
            captions = [captions] if isinstance(captions, str) else captions
            if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
                raise BadRecord(BAD, "caption missing or empty")
            path = resolve_media(name, base, m)
            check(path, m)
        except BadRecord as exc:
            logger.debug("%s#%d skipped: %s", json_path, i, exc)
            report.skip(exc.reason)
            continue
        pairs.extend(CaptionPair(modality=m, caption=c.strip(), media_path=path) for c in captions)
        report.read += 1
    _log_summary(json_path, "caption pairs", report)
    return pairs, report


# --- conversations ----------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _input_queue(holder: dict[str, Any], modality: Modality, with_name: bool = True) -> list[str]:
    names: list[str] = []
    keys = (f"{modality}_list", modality, f"{modality}_path") + ((f"{modality}_name",) if with_name else ())
    for key in keys:
        names.extend(n for n in _as_list(holder.get(key)) if isinstance(n, str) and n)
    return names


def _output_captions(turn: dict[str, Any]) -> list[tuple[Modality | None, str]]:
    """Captions a gpt turn declares itself: `outputs` entries, or `caption` (+ `output_modality`)."""
    out: list[tuple[Modality | None, str]] = []
    for entry in _as_list(turn.get("outputs")):
        if not isinstance(entry, dict) or entry.get("modality") not in MODALITIES:
            raise BadRecord(BAD, f"outputs entry {entry!r} needs a modality of {MODALITIES} and a caption")
        out.append((entry["modality"], str(entry.get("caption", ""))))
    if not out:
        modality = turn.get("output_modality")
        modality = modality if modality in MODALITIES else None
        out.extend((modality, str(c)) for c in _as_list(turn.get("caption")))
    return out


def parse_conversation(
    record: dict[str, Any],
    media_dir: Path,
    source: str,
    layout: str = "legacy",
    check: _MediaChecker | None = None,
) -> Conversation:
    """One `conversations` record (T->T+X, MosIT, LLaVA) -> Conversation; raises BadRecord."""
    raw_turns = record.get("conversations", record.get("conversation"))
    if not isinstance(raw_turns, list) or not raw_turns:
        raise BadRecord(BAD, "no conversations list")
    spans = {m: "".join(get_layout(layout).tokens[m]) for m in MODALITIES}
    # T-T+X records name their *output* file in `image_name` next to `output_modality`: not an input.
    is_output_name = "output_modality" in record
    record_inputs = {m: _input_queue(record, m, with_name=not is_output_name) for m in MODALITIES}
    record_captions = {
        m: [str(c) for c in _as_list(record.get(f"{m}_captions", record.get(f"{m}_caption")))]
        for m in MODALITIES
    }
    turns: list[Turn] = []
    for raw in raw_turns:
        if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
            raise BadRecord(BAD, "a turn without a string value")
        who = str(raw.get("from", raw.get("role", ""))).lower()
        if who == "system":
            continue
        if who not in ROLES:
            raise BadRecord(BAD, f"unknown speaker {who!r}")
        role = ROLES[who]
        if role == "user":
            turns.append(_user_turn(raw, record_inputs, media_dir))
        else:
            turns.append(_assistant_turn(raw, record_captions, spans))
    if not any(t.role == "assistant" for t in turns):
        raise BadRecord(BAD, "no assistant turn")
    # Record-level files no placeholder claimed: in front of the first human turn (LLaVA).
    leftovers = [(m, n) for m in MODALITIES for n in record_inputs[m]]
    if leftovers:
        first = next((t for t in turns if t.role == "user"), None)
        if first is None:
            raise BadRecord(BAD, "input media but no human turn")
        prefix = [MediaRef(m, resolve_media(n, media_dir, m)) for m, n in leftovers]
        first.text = "".join(f"{MEDIA_MARKERS[r.modality]}\n" for r in prefix) + first.text
        first.inputs = prefix + first.inputs
    if check is not None:
        for turn in turns:
            for ref in turn.inputs:
                check(ref.path, ref.modality)
    return Conversation(turns=turns, source=source)


def _user_turn(raw: dict[str, Any], record_inputs: dict[Modality, list[str]], media_dir: Path) -> Turn:
    own = {m: _input_queue(raw, m) for m in MODALITIES}
    inputs: list[MediaRef] = []

    def take(match: re.Match[str]) -> str:
        m = cast(Modality, match.group(1).lower())  # PLACEHOLDER matches <image>, <video>, <audio> only
        queue = own[m] or record_inputs[m]
        if not queue:
            raise BadRecord(NO_FILE, f"{MEDIA_MARKERS[m]} in a human turn but no {m} file listed")
        inputs.append(MediaRef(m, resolve_media(queue.pop(0), media_dir, m)))
        return MEDIA_MARKERS[m]

    text = PLACEHOLDER.sub(take, raw["value"])
    for m in MODALITIES:  # files the turn lists without placeholders: in front, as LLaVA does
        for name in own[m]:
            inputs.insert(0, MediaRef(m, resolve_media(name, media_dir, m)))
            text = f"{MEDIA_MARKERS[m]}\n{text}"
    return Turn(role="user", text=text, inputs=inputs)


def _assistant_turn(
    raw: dict[str, Any], record_captions: dict[Modality, list[str]], spans: dict[Modality, str]
) -> Turn:
    declared = _output_captions(raw)
    outputs: list[OutputRef] = []

    def take(match: re.Match[str]) -> str:
        m = cast(Modality, match.group(1).lower())  # PLACEHOLDER matches <image>, <video>, <audio> only
        i = next((k for k, (dm, _) in enumerate(declared) if dm in (m, None)), None)
        if i is not None:
            caption = declared.pop(i)[1]
            if record_captions[m][:1] == [caption]:  # listed twice (T-T+X): consume both
                record_captions[m].pop(0)
        elif record_captions[m]:
            caption = record_captions[m].pop(0)
        else:
            raise BadRecord(NO_CAPTION, f"{MEDIA_MARKERS[m]} in a gpt turn without a caption")
        if not caption.strip():
            raise BadRecord(NO_CAPTION, f"{MEDIA_MARKERS[m]} in a gpt turn with an empty caption")
        outputs.append(OutputRef(m, caption.strip()))
        return spans[m]

    text = PLACEHOLDER.sub(take, raw["value"])
    for m, caption in declared:  # declared outputs without a placeholder: the span goes at the end
        if m is None or not caption.strip():
            raise BadRecord(NO_CAPTION, "a gpt turn's caption has no output_modality")
        outputs.append(OutputRef(m, caption.strip()))
        text = f"{text.rstrip()} {spans[m]}"
    return Turn(role="assistant", text=text, outputs=outputs)


def parse_alpaca(record: dict[str, Any], source: str) -> Conversation:
    instruction, extra, output = record.get("instruction"), record.get("input", ""), record.get("output")
    if (
        not isinstance(instruction, str)
        or not instruction.strip()
        or not isinstance(output, str)
        or not output
    ):
        raise BadRecord(BAD, "alpaca record needs a non-empty instruction and output")
    text = instruction.strip() + (f"\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else "")
    return Conversation(turns=[Turn("user", text), Turn("assistant", output.strip())], source=source)


def read_instructions(
    path: str | Path,
    media_dir: str | Path | None = None,
    fmt: InstructionFormat = "auto",
    *,
    layout: str = "legacy",
    verify: Verify = "header",
) -> tuple[list[Conversation], ReadReport]:
    """Instruction data -> Conversations. `fmt="auto"` decides per record (Alpaca keys, else
    conversations); `media_dir` defaults to the file's folder; `layout` picks the signal-token text
    that replaces output placeholders."""
    if fmt not in ("auto", "conversations", "llava", "alpaca"):
        raise ValueError(f"fmt={fmt!r}; use auto, conversations, llava or alpaca")
    path = Path(path)
    base = Path(media_dir) if media_dir is not None else path.parent
    report = ReadReport()
    check = _MediaChecker(verify)
    conversations: list[Conversation] = []
    for i, record in iter_records(path, report):
        source = f"{path.name}#{i}"
        try:
            if not isinstance(record, dict):
                raise BadRecord(BAD, "not an object")
            alpaca = fmt == "alpaca" or (fmt == "auto" and "instruction" in record and "output" in record)
            if alpaca:
                conversations.append(parse_alpaca(record, source))
            else:
                conversations.append(parse_conversation(record, base, source, layout, check))
        except BadRecord as exc:
            logger.debug("%s skipped: %s", source, exc)
            report.skip(exc.reason)
            continue
        report.read += 1
    _log_summary(path, "conversations", report)
    return conversations, report


def output_captions(conversations: list[Conversation]) -> dict[Modality, list[str]]:
    """The captions of every output to generate, per modality, first-seen order, no duplicates: the
    caption sets whose targets stage 2 and 3 need."""
    out: dict[Modality, dict[str, None]] = {m: {} for m in MODALITIES}
    for conversation in conversations:
        for turn in conversation.turns:
            for ref in turn.outputs:
                out[ref.modality][ref.caption] = None
    return {m: list(captions) for m, captions in out.items()}
