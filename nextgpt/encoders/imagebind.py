"""The frozen ImageBind encoder: media bytes -> one embedding per input (design 1.3).

The model code is Meta's, from the `imagebind-unofficial` package; the preprocessing is ours
(`nextgpt.encoders.preprocess`). What `encode_batch` returns is exactly `ImageBindModel.forward`'s output,
because that is what NExT-GPT's input projector (`llama_proj`) was trained on:
- image: L2-normalised (norm 1);
- video: the mean over 15 clip-crops of L2-normalised vectors (norm <= 1, not re-normalised);
- audio: the mean over 3 clips of L2-normalised vectors *times 20* (ImageBind's fixed audio logit
  scale; norm <= 20);
- text: L2-normalised times the learned logit scale (~14.3 at init, up to 100).
Pass `normalize=True` for unit vectors (retrieval, similarity), never for the projector.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from nextgpt import tiny_profile as dims
from nextgpt.config import EncoderConfig
from nextgpt.encoders import preprocess as pp
from nextgpt.errors import CheckpointError, InvalidInput, ModelNotReady
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

EncoderModality = Literal["image", "audio", "video", "text"]
TEXT_CONTEXT_LENGTH = 77
_MODEL_KEY = {"image": "vision", "video": "vision", "audio": "audio", "text": "text"}

ARCHS: dict[str, dict[str, Any]] = {
    # `imagebind_huge()` in imagebind/models/imagebind_model.py; other arguments keep their defaults.
    "huge": {
        "vision_embed_dim": 1280,
        "vision_num_blocks": 32,
        "vision_num_heads": 16,
        "text_embed_dim": 1024,
        "text_num_blocks": 24,
        "text_num_heads": 16,
        "out_embed_dim": 1024,
        "audio_drop_path": 0.1,
        "imu_drop_path": 0.7,
    },
    # Every trunk is built by the constructor, so every trunk is made tiny. Input sizes (224 px,
    # 128 x 204 fbank, 77 text tokens, 2 frames) stay real: the same preprocessing feeds both.
    "tiny": {
        "out_embed_dim": dims.ENCODER_EMBED,
        "vision_embed_dim": 32,
        "vision_num_blocks": 1,
        "vision_num_heads": 2,
        "audio_embed_dim": 32,
        "audio_num_blocks": 1,
        "audio_num_heads": 2,
        "audio_drop_path": 0.1,
        "text_embed_dim": 32,
        "text_num_blocks": 1,
        "text_num_heads": 2,
        "depth_embed_dim": 16,
        "depth_num_blocks": 1,
        "depth_num_heads": 2,
        "thermal_embed_dim": 16,
        "thermal_num_blocks": 1,
        "thermal_num_heads": 2,
        "imu_embed_dim": 16,
        "imu_num_blocks": 1,
        "imu_num_heads": 2,
        "imu_drop_path": 0.7,
    },
    # The `shapes` profile's encoder, trained on the shapes world (nextgpt/training/foundation/encoder.py).
    # Same input sizes as the real model; coarser patches (28 px vision, 16 x 16 non-overlapping audio)
    # cut the tokens 4x / 2.4x, which buys the width and the second vision block that shapes and motion
    # directions need, within the CPU budget. `out_embed_dim` is the width the input projector reads.
    # 16 vision heads of 4 dims: the class token is the only read-out, and each head picks its own few
    # patches (a corner, a tip), as the channels of a max pooling do; with 4 heads the tower stayed at
    # chance on shapes (docs/training.md, "the encoder's read-out").
    "shapes": {
        "out_embed_dim": 64,
        "kernel_size": (2, 28, 28),
        "vision_embed_dim": 64,
        "vision_num_blocks": 2,
        "vision_num_heads": 16,
        "audio_kernel_size": 16,
        "audio_stride": 16,
        "audio_embed_dim": 64,
        "audio_num_blocks": 1,
        "audio_num_heads": 4,
        "audio_drop_path": 0.0,
        "text_embed_dim": 64,
        "text_num_blocks": 1,
        "text_num_heads": 4,
        "depth_embed_dim": 16,
        "depth_num_blocks": 1,
        "depth_num_heads": 2,
        "thermal_embed_dim": 16,
        "thermal_num_blocks": 1,
        "thermal_num_heads": 2,
        "imu_embed_dim": 16,
        "imu_num_blocks": 1,
        "imu_num_heads": 2,
        "imu_drop_path": 0.0,
    },
}


# --- importing Meta's model code without its data dependencies ---------------------------------------


class _DropPath(nn.Module):
    """Stochastic depth (timm's DropPath): drops whole residual branches per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _install_import_shims() -> None:
    """Make `import imagebind.models.imagebind_model` work here without editing site-packages.

    - `imagebind/__init__.py` imports `imagebind.data`, which needs torchvision/torchaudio/pytorchvideo;
      those cannot live beside our CPU torch (design 4). We register a bare `imagebind` package module
      whose `__path__` points at the installed package, so the submodules import but `__init__` never runs.
    - `imagebind/models/transformer.py` imports `DropPath, trunc_normal_` from `timm.layers`, and timm
      drags torchvision too. Only when timm is absent we register a two-name `timm.layers` stand-in; the
      model has no other use for timm, and DropPath is the identity in eval mode anyway.
    """
    if "imagebind" not in sys.modules:
        spec = importlib.util.find_spec("imagebind")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotReady(
                "the `imagebind-unofficial` package is not installed; run "
                "`pip install --no-deps imagebind-unofficial==0.1.1`"
            )
        package = types.ModuleType("imagebind")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        package.__spec__ = spec
        sys.modules["imagebind"] = package
    try:
        import timm.layers  # noqa: F401
    except Exception:
        timm = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")
        # Specs, so that `importlib.util.find_spec("timm")` (diffusers asks it) answers instead of raising
        # "timm.__spec__ is None"; with no distribution metadata, libraries still see timm as absent.
        timm.__spec__ = importlib.machinery.ModuleSpec("timm", None, is_package=True)
        layers.__spec__ = importlib.machinery.ModuleSpec("timm.layers", None)
        # Stand-in modules built here: ModuleType declares none of the attributes set on them.
        layers.DropPath = _DropPath  # type: ignore[attr-defined]
        layers.trunc_normal_ = nn.init.trunc_normal_  # type: ignore[attr-defined]
        timm.layers = layers  # type: ignore[attr-defined]
        sys.modules["timm"], sys.modules["timm.layers"] = timm, layers


def imagebind_module() -> types.ModuleType:
    """`imagebind.models.imagebind_model`, imported through the shims."""
    _install_import_shims()
    from imagebind.models import imagebind_model

    return imagebind_model


def build_model(arch: str) -> nn.Module:
    """An `ImageBindModel` with random weights for one of `ARCHS`."""
    if arch not in ARCHS:
        raise CheckpointError(f"unknown ImageBind arch {arch!r}; choose one of {sorted(ARCHS)}")
    return imagebind_module().ImageBindModel(**ARCHS[arch])


def bpe_path() -> Path:
    """CLIP's BPE vocabulary shipped inside the imagebind package."""
    _install_import_shims()
    root = Path(sys.modules["imagebind"].__path__[0])
    return root / "bpe" / "bpe_simple_vocab_16e6.txt.gz"


_TOKENIZER: Any = None


def _tokenizer() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        _install_import_shims()
        from imagebind.models.multimodal_preprocessors import (
            SimpleTokenizer,
        )

        _TOKENIZER = SimpleTokenizer(bpe_path=str(bpe_path()), context_length=TEXT_CONTEXT_LENGTH)
    return _TOKENIZER


def tokenize(texts: list[str]) -> torch.Tensor:
    """ImageBind's text tokens: (B, 77) int64, truncated to 76 tokens + end-of-text."""
    tok = _tokenizer()
    return torch.stack([tok(t) for t in texts])


# --- preprocessing of one item -----------------------------------------------------------------------


# --- the encoder ---------------------------------------------------------------------------------------


class ImageBindEncoder:
    """Frozen ImageBind: preprocessed tensors (or strings) in, one embedding per input out."""

    def __init__(self, model: nn.Module, cfg: EncoderConfig) -> None:
        placement = cfg.placement.resolve()
        self.cfg = cfg
        self.device = torch.device(placement.device)
        self.dtype = placement.torch_dtype
        self.model = model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        head = cast(nn.Linear, self.model.get_submodule("modality_heads.vision.2"))
        self._embed_dim = int(head.out_features)
        if self._embed_dim != cfg.embed_dim:
            raise CheckpointError(
                f"ImageBind arch {cfg.arch!r} embeds to {self._embed_dim} dims but the config says "
                f"embed_dim={cfg.embed_dim}; fix `encoder.embed_dim` or `encoder.arch`"
            )

    @classmethod
    def load(cls, cfg: EncoderConfig) -> ImageBindEncoder:
        """Build `ARCHS[cfg.arch]` and load `cfg.checkpoint` (a plain state dict) strictly."""
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise ModelNotReady(
                f"ImageBind weights not found at {path}. For the tiny profile run `nextgpt init-tiny`; for "
                "ImageBind-huge download https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth there."
            )
        model = build_model(cfg.arch)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"could not read ImageBind checkpoint {path}: {exc}") from exc
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
        _check_state_dict(model, state, path, cfg.arch)
        model.load_state_dict(state, strict=True)
        logger.info("loaded ImageBind %s from %s", cfg.arch, path)
        return cls(model, cfg)

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def encode_batch(
        self,
        modality: EncoderModality,
        inputs: Sequence[torch.Tensor | str],
        normalize: bool = False,
    ) -> torch.Tensor:
        """(B, E) float32 on CPU: `ImageBindModel.forward` output for this modality (see module doc).

        inputs: preprocessed tensors of one modality (shapes as `preprocess`), or strings for text.
        """
        if modality not in _MODEL_KEY:
            raise InvalidInput(f"modality {modality!r} unknown; use one of {sorted(_MODEL_KEY)}")
        if not inputs:
            return torch.zeros(0, self.embed_dim)
        if modality == "text":
            if not all(isinstance(t, str) for t in inputs):
                raise InvalidInput("text inputs must be strings")
            batch = tokenize([str(t) for t in inputs])  # (B, 77)
        else:
            expected = _EXPECTED_SHAPES[modality]
            for x in inputs:
                if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected:
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise InvalidInput(
                        f"{modality} input has shape {got}, expected {expected}: preprocess it"
                    )
            # One input needs no copy: a video is 15 x 3 x 2 x 224 x 224 floats (18 MB), and copying it
            # cost about a third of the tiny encoder's time for it.
            tensors = [x for x in inputs if isinstance(x, torch.Tensor)]  # all of them (checked above)
            stacked = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
            batch = stacked.to(self.dtype)  # (B, *shape)
        key = _MODEL_KEY[modality]
        with torch.inference_mode():
            out = self.model({key: batch.to(self.device)})[key]  # (B, E); clips averaged inside
        out = out.float().cpu()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def encode(self, item: MediaItem, normalize: bool = False) -> torch.Tensor:
        """One medium's bytes -> (E,) embedding."""
        return self.encode_batch(item.modality, [pp.load_and_preprocess(item)], normalize=normalize)[0]


_EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (3, pp.IMAGE_SIZE, pp.IMAGE_SIZE),
    "audio": (pp.AUDIO_CLIPS, 1, pp.AUDIO_NUM_MEL_BINS, pp.AUDIO_TARGET_LEN),
    "video": (
        pp.VIDEO_CLIPS * pp.VIDEO_SPATIAL_CROPS,
        3,
        pp.VIDEO_FRAMES_PER_CLIP,
        pp.IMAGE_SIZE,
        pp.IMAGE_SIZE,
    ),
}


def _check_state_dict(model: nn.Module, state: dict[str, Any], path: Path, arch: str) -> None:
    """Raise CheckpointError naming missing / unexpected / mis-shaped keys and the likely cause."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for name, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{name}: {', '.join(items[:5])}{more}")
    hint = (
        f"the checkpoint was probably made for another ImageBind size than arch={arch!r} "
        "(huge vs tiny), or is not an ImageBind state dict at all"
    )
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = "keys carry a `module.` prefix (saved from DataParallel); strip it"
    raise CheckpointError(f"{path} does not fit ImageBind {arch!r}: {'; '.join(parts)}. Likely cause: {hint}")
