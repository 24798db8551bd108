"""Image decoder: Stable Diffusion driven by the image output projector's 77 x D conditioning.

The projector output stands in for CLIP's text-encoder states, so the pipeline gets `prompt_embeds`
and, for classifier-free guidance, `negative_prompt_embeds` = CLIP's embedding of "" (exactly what the
pipeline would compute for an empty negative prompt). `encode_text` gives stage 2's alignment targets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

# From its module, not `diffusers`: the package's TYPE_CHECKING branch types the lazy names as dummies.
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from nextgpt.config import DecodeDefaults
from nextgpt.decoders._pipeline import (
    PipelineDecoder,
    StopCheck,
    check_cond,
    execution_device,
    item_seeds,
    make_generators,
    stop_on_step_end,
)
from nextgpt.media.encode import PNG_MIME, encode_png, to_uint8
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

# UNet modules whose two classifier-free-guidance halves carry equal values (they see only the latents
# and the timestep, up to the first cross-attention), computed once per batch instead of twice. A UNet
# whose time embedding also takes the caption (`addition_embed_type="text"`, the `shapes` profile's) gives
# the resnet unequal halves: the wrapper sees that and runs both.
GUIDANCE_SHARED = (
    "conv_in",
    "down_blocks.0.resnets.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
)


class ImageDecoder(PipelineDecoder[StableDiffusionPipeline]):
    """Stable Diffusion (SD 1.5: 77 x 768) loaded from a local diffusers directory; `decode` gives one PNG
    per row of its (B, 77, D) conditioning."""

    PIPELINE = StableDiffusionPipeline
    MODALITY = "image"
    GUIDANCE_SHARED = GUIDANCE_SHARED

    @property
    def cond_shape(self) -> tuple[int, int]:
        """(tokens, width) of the CLIP text states the UNet cross-attends to, e.g. (77, 768)."""
        config = self.pipe.text_encoder.config
        return (config.max_position_embeddings, config.hidden_size)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(
            captions, execution_device(self.pipe), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return embeds  # (B, 77, D)

    def diffuse(
        self,
        cond: torch.Tensor,
        options: DecodeDefaults,
        seed: int | None = None,
        progress: bool = False,
        *,
        seeds: Sequence[int | None] | None = None,
        should_stop: StopCheck | None = None,
    ) -> np.ndarray:
        """The pipeline call of `decode`: (B, H, W, 3) float images in [0, 1], not yet encoded.

        `should_stop` is polled after every denoising step; once it returns True the call raises
        `Stopped` (a served batch whose requests were all cancelled).
        """
        # 1. Check inputs.
        check_cond(cond, self.cond_shape, "image")
        batch = cond.shape[0]
        per_item = item_seeds(batch, seed, seeds)
        with self._lock:
            # 2. Conditioning and the empty-prompt negative on the compute device.
            device = execution_device(self.pipe)
            cond = cond.to(device=device, dtype=self.pipe.text_encoder.dtype)  # (B, 77, D)
            negative = self.negative_embeds.expand(batch, -1, -1)  # (B, 77, D)
            # 3. Denoise and decode latents.
            self.pipe.set_progress_bar_config(disable=not progress)
            with torch.no_grad():
                images: np.ndarray = self.pipe(
                    prompt_embeds=cond,
                    negative_prompt_embeds=negative,
                    height=options.height,
                    width=options.width,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance_scale,
                    generator=make_generators(device, per_item),
                    output_type="np",
                    **stop_on_step_end(should_stop),
                ).images  # (B, H, W, 3) float in [0, 1]
        return images

    def to_media(self, images: np.ndarray, options: DecodeDefaults) -> list[MediaItem]:
        """(B, H, W, 3) floats -> one PNG each (one uint8 conversion for the batch, then one file each)."""
        pixels = to_uint8(images)  # (B, H, W, 3) uint8
        return [MediaItem("image", encode_png(image), PNG_MIME) for image in pixels]
