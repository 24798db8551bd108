"""Projectors as the pipeline and the services use them: built from the profile, weights from the
delta checkpoint (random, with a warning, when the profile has none), placed and in eval mode."""

from __future__ import annotations

import logging
from typing import TypeVar

from torch import nn

from nextgpt.checkpoint import DeltaCheckpoint, load_into
from nextgpt.config import ProfileConfig
from nextgpt.errors import CheckpointError
from nextgpt.projectors.input import build_input_projector
from nextgpt.projectors.output import OutputProjector
from nextgpt.types import Modality

M = TypeVar("M", bound=nn.Module)

logger = logging.getLogger(__name__)


def load_input_projector(profile: ProfileConfig, delta: DeltaCheckpoint | None) -> nn.Module:
    projector = build_input_projector(profile.input_projector)
    if delta is not None:
        load_into(projector, delta.input_projector, "input projector")
    else:
        logger.warning("profile %s has no delta checkpoint: the input projector is random", profile.name)
    return _placed(projector, profile)


def load_output_projector(
    profile: ProfileConfig, delta: DeltaCheckpoint | None, modality: Modality
) -> OutputProjector:
    projector = OutputProjector(profile.output_projectors[modality])
    if delta is not None:
        if modality not in delta.output_projectors:
            raise CheckpointError(
                f"{profile.delta_checkpoint} holds no {modality} output projector; use a full NExT-GPT "
                "delta checkpoint"
            )
        load_into(projector, delta.output_projectors[modality], f"{modality} output projector")
    else:
        logger.warning(
            "profile %s has no delta checkpoint: the %s projector is random", profile.name, modality
        )
    return _placed(projector, profile)


def _placed(module: M, profile: ProfileConfig) -> M:
    placement = profile.projector_placement.resolve()
    return module.to(placement.device, placement.torch_dtype).eval()
