"""Caption targets: the decoders' own text-encoder embeddings of the captions, computed once and cached.

Stage 2 (and 3) pull each output projector towards the embedding its diffusion decoder would compute
for the caption (design 2): CLIP 77x768 for SD 1.5, OpenCLIP 77x1024 for Zeroscope, normalised CLAP 512
for AudioLDM. Text encoders are frozen, so the targets are computed once per caption set and stored:

    DIR/targets/image-<digest>.safetensors   one tensor "targets", (N, 77, D) or (N, D)
    DIR/targets/image-<digest>.json          {"captions": {caption: row}, "shape", "text_encoder": ...}
    DIR/targets/index.json                   {modality: file name} of the latest run, for the trainer

The digest hashes the text encoder's identity (class, config, a fingerprint of its weights, tokenizer
length) and the sorted unique captions: the same captions through the same encoder give the same file
(computed once), anything else a new one, so targets of another decoder can never be picked up silently.
Targets are encoded on one thread: on two, a few elements come out different by ~1e-7 (first in the
world's video text encoder's quick-GELU, found with forward hooks), and a cached file must hold the
same bytes whoever computed it (a rebuild reusing one-thread targets trained another LLM delta than a
clean build on two threads). `check_target_dims` catches the remaining trap, targets of one width
against a profile of another (the reference's 768-vs-1024 mix-up of image and video targets).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nextgpt.config import ProfileConfig
from nextgpt.errors import ConfigError
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, Modality

logger = logging.getLogger(__name__)

TARGETS_VERSION = 2
"""Part of every digest: bump when the stored content of the same captions would change (2: one thread)."""
INDEX_NAME = "index.json"

DECODER_MODALITY: dict[str, Modality] = {out.decoder.partition(":")[2]: m for m, out in OUTPUTS.items()}
"""Decoder class name -> its modality."""
KNOWN_WIDTHS: dict[int, str] = {
    768: "Stable Diffusion 1.5's CLIP ViT-L/14 text encoder (the image decoder of nextgpt-7b-tiva-v0)",
    1024: "Zeroscope v2's OpenCLIP ViT-H/14 text encoder (the video decoder of nextgpt-7b-tiva-v0)",
    512: "AudioLDM's CLAP text projection (the audio decoder of nextgpt-7b-tiva-v0)",
}


class TextEncoding(Protocol):
    """What precompute needs of a decoder: `ImageDecoder`, `VideoDecoder` and `AudioDecoder` fit."""

    pipe: Any

    def encode_text(self, captions: list[str]) -> torch.Tensor: ...


def decoder_modality(decoder: TextEncoding) -> Modality:
    name = type(decoder).__name__
    if name not in DECODER_MODALITY:
        raise TypeError(f"{name} is not one of {sorted(DECODER_MODALITY)}")
    return DECODER_MODALITY[name]


def text_encoder_identity(decoder: TextEncoding) -> dict[str, Any]:
    """What makes two text encoders give the same targets: the modality (the audio decoder normalises),
    the encoder's class and config, its tokenizer's length and a fingerprint of its weights (names,
    shapes, a prefix of each tensor and each tensor's sum; cheap even for CLIP-L)."""
    encoder = decoder.pipe.text_encoder
    # Where it was loaded from is no part of what it computes: the same encoder at another path hits.
    skipped = ("transformers_version", "dtype", "_name_or_path")
    config = {k: v for k, v in encoder.config.to_dict().items() if k not in skipped}
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(encoder.state_dict().items()):
            flat = tensor.detach().reshape(-1).float().cpu()
            digest.update(f"{name}:{tuple(tensor.shape)}:{flat.double().sum().item():.9e}".encode())
            digest.update(flat[:256].numpy().tobytes())
    return {
        "version": TARGETS_VERSION,
        "modality": decoder_modality(decoder),
        "class": type(encoder).__name__,
        "config": json.dumps(config, sort_keys=True, default=str),
        "tokenizer": f"{type(decoder.pipe.tokenizer).__name__}:{decoder.pipe.tokenizer.model_max_length}",
        "weights": digest.hexdigest(),
    }


def targets_digest(identity: dict[str, Any], captions: Iterable[str]) -> str:
    payload = json.dumps({"encoder": identity, "captions": sorted(set(captions))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch's intra-op threads set to 1 inside the block (restored after): results independent of the
    caller's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def precompute_targets(
    captions: list[str],
    decoder: TextEncoding,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> Path:
    """Encode the unique `captions` with the decoder's own text encoder, in batches, into one
    content-addressed safetensors file under `out_dir` (reused when it exists). Returns its path."""
    unique = sorted({c.strip() for c in captions if c.strip()})
    if not unique:
        raise ValueError("precompute_targets needs at least one non-empty caption")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    identity = text_encoder_identity(decoder)
    modality = identity["modality"]
    out = Path(out_dir)
    path = out / f"{modality}-{targets_digest(identity, unique)}.safetensors"
    index_path = path.with_suffix(".json")
    if path.is_file() and index_path.is_file():
        logger.info("%s targets for %d captions already at %s", modality, len(unique), path)
        return path
    out.mkdir(parents=True, exist_ok=True)
    chunks = []
    batches = range(0, len(unique), batch_size)
    with one_thread():
        for start in tqdm(batches, desc=f"{modality} targets", unit="batch", disable=not progress):
            chunks.append(decoder.encode_text(unique[start : start + batch_size]).float().cpu())
    table = torch.cat(chunks).contiguous()  # (N, 77, D) or (N, D)
    # Write to temporaries and rename: an interrupted run never leaves a file that looks complete.
    tmp = path.with_suffix(".safetensors.tmp")
    save_file({"targets": table}, str(tmp), metadata={"modality": modality})
    index = {
        "modality": modality,
        "shape": list(table.shape[1:]),
        "text_encoder": identity,
        "decoder_dir": str(getattr(getattr(decoder, "cfg", None), "pipeline_dir", "")),
        "captions": {caption: row for row, caption in enumerate(unique)},
    }
    index_tmp = index_path.with_suffix(".json.tmp")
    index_tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(path)
    index_tmp.replace(index_path)
    logger.info(
        "%s targets %s for %d captions written to %s", modality, tuple(table.shape[1:]), len(unique), path
    )
    return path


def load_targets(path: str | Path) -> dict[str, torch.Tensor]:
    """caption -> target tensor ((77, D) or (D,)) of one targets file (its .safetensors or .json)."""
    path = Path(path).with_suffix(".safetensors")
    index_path = path.with_suffix(".json")
    if not path.is_file() or not index_path.is_file():
        raise FileNotFoundError(
            f"targets file {path} or its index {index_path.name} is missing; run `nextgpt precompute-targets`"
        )
    table = load_file(str(path))["targets"]
    rows: dict[str, int] = json.loads(index_path.read_text())["captions"]
    if len(rows) != table.shape[0]:
        raise ValueError(f"{path}: {table.shape[0]} rows but {len(rows)} captions in {index_path.name}")
    return {caption: table[row] for caption, row in rows.items()}


def load_data_targets(data_dir: str | Path, modality: Modality) -> dict[str, torch.Tensor]:
    """The targets `nextgpt precompute-targets` last wrote for `modality` into `data_dir/targets/`."""
    targets_dir = Path(data_dir) / "targets"
    index_path = targets_dir / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if modality not in index:
        raise FileNotFoundError(
            f"no {modality} targets in {targets_dir}; run `nextgpt precompute-targets --data {data_dir}`"
        )
    return load_targets(targets_dir / index[modality])


def expected_target_shape(profile: ProfileConfig, modality: Modality) -> tuple[int, ...]:
    """The shape one target must have: the output projector's (num_queries, out_dim), or (out_dim,)
    where the projector gives one row (AudioLDM's single CLAP vector)."""
    proj = profile.output_projectors[modality]
    return (proj.out_dim,) if proj.num_queries == 1 else (proj.num_queries, proj.out_dim)


def _width_owner(width: int, profile: ProfileConfig) -> str:
    owners = [
        f"the {m} decoder of profile {profile.name!r} ({profile.decoders[m].pipeline_dir})"
        for m in MODALITIES
        if profile.output_projectors[m].out_dim == width
    ]
    if width in KNOWN_WIDTHS:
        owners.append(KNOWN_WIDTHS[width])
    return " / ".join(owners) if owners else "no decoder of this profile"


def check_target_dims(
    targets: dict[str, torch.Tensor], profile: ProfileConfig, modality: Modality, source: str = ""
) -> None:
    """Raise ConfigError, naming both widths and the decoders they belong to, when the stored targets do
    not fit the profile's `modality` output projector / decoder."""
    if not targets:
        raise ConfigError(
            f"no {modality} targets{f' in {source}' if source else ''}; run `nextgpt precompute-targets`"
        )
    expected = expected_target_shape(profile, modality)
    shapes = {tuple(t.shape) for t in targets.values()}
    if len(shapes) != 1:
        raise ConfigError(
            f"{modality} targets{f' in {source}' if source else ''} mix shapes {sorted(shapes)}"
        )
    (found,) = shapes
    if found == expected or (len(found) == 2 and found[0] == 1 and found[1:] == expected):
        return
    where = f" from {source}" if source else ""
    got, want = "x".join(map(str, found)), "x".join(map(str, expected))
    raise ConfigError(
        f"{modality} targets{where} are {got} but profile {profile.name!r} has a {modality} "
        f"output projector producing {want} (num_queries x out_dim); "
        f"width {found[-1]} belongs to {_width_owner(found[-1], profile)}, "
        f"width {expected[-1]} to {_width_owner(expected[-1], profile)}. "
        f"Recompute the targets with this profile's {modality} decoder: "
        f"`nextgpt precompute-targets --data DIR --profile {profile.name} --modality {modality}`"
    )


# --- caption sets of a data directory ---------------------------------------------------------------

PAIR_FILES: dict[Modality, tuple[str, ...]] = {
    "image": ("cc3m.json", "cc3m.jsonl"),
    "video": ("webvid.json", "webvid.jsonl"),
    "audio": ("audiocaps.json", "audiocaps.jsonl", "audiocap.json"),
}
INSTRUCTION_FILES = ("instructions.json", "instructions.jsonl")


def data_caption_sets(data_dir: str | Path) -> dict[Modality, list[str]]:
    """Every caption a stage will need a target for, per modality: the X-caption pairs (stage 2 feeds
    their captions as text) plus the outputs of the instruction dialogues (stage 3)."""
    from nextgpt.training.data.readers import output_captions, read_caption_pairs, read_instructions

    root = Path(data_dir)
    sets: dict[Modality, dict[str, None]] = {m: {} for m in MODALITIES}
    for modality, names in PAIR_FILES.items():
        for name in names:
            if (root / name).is_file():
                pairs, _ = read_caption_pairs(root / name, root, modality, verify="none")
                sets[modality].update(dict.fromkeys(p.caption for p in pairs))
    for name in INSTRUCTION_FILES:
        if (root / name).is_file():
            conversations, _ = read_instructions(root / name, root, verify="none")
            for modality, captions in output_captions(conversations).items():
                sets[modality].update(dict.fromkeys(captions))
    return {m: list(captions) for m, captions in sets.items()}


def write_index(targets_dir: Path, written: dict[Modality, Path]) -> Path:
    """Record which file holds each modality's targets (merged with what an earlier run wrote)."""
    index_path = targets_dir / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index.update({m: p.name for m, p in written.items()})
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index_path
