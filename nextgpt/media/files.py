"""Media items to and from files: what the CLI and the demo read and write."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from nextgpt.errors import NextGPTError
from nextgpt.types import MODALITIES, MediaItem, Modality

EXTENSIONS = {"image/png": ".png", "video/mp4": ".mp4", "audio/wav": ".wav"}


def read_media_file(path: Path, modality: Modality) -> MediaItem:
    """The file's bytes as a medium, its MIME type guessed from the name."""
    if not path.is_file():
        raise NextGPTError(f"{modality} file {path} does not exist")
    mime = mimetypes.guess_type(path.name)[0] or f"{modality}/octet-stream"
    return MediaItem(modality=modality, data=path.read_bytes(), mime_type=mime)


def write_media(media: list[MediaItem], out: Path, prefix: str = "") -> list[Path]:
    """Write each medium to `out` as `{prefix}{modality}-{n}{ext}`; the paths, in order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    counts = dict.fromkeys(MODALITIES, 0)
    for item in media:
        counts[item.modality] += 1
        ext = EXTENSIONS.get(item.mime_type, "")
        path = out / f"{prefix}{item.modality}-{counts[item.modality]}{ext}"
        path.write_bytes(item.data)
        paths.append(path)
    return paths
