"""Video decoder: Zeroscope (diffusers' TextToVideoSDPipeline) driven by the video output projector's
77 x D conditioning (Zeroscope v2: 77 x 1024, not SD's 768), written as an H.264 MP4.

As for images, the negative embedding for classifier-free guidance is the text encoder's own embedding
of "", and `encode_text` gives stage 2's alignment targets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

# From its module, not `diffusers`: the package's TYPE_CHECKING branch types the lazy names as dummies.
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth import (
    TextToVideoSDPipeline,
)

from nextgpt.config import DecodeDefaults
from nextgpt.decoders._pipeline import (
    PipelineDecoder,
    StopCheck,
    check_cond,
    execution_device,
    item_seeds,
    make_generators,
    stop_on_step,
)
from nextgpt.errors import InvalidInput
from nextgpt.media.encode import MP4_MIME, encode_mp4, to_uint8
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

# UNet modules whose two classifier-free-guidance halves carry equal values (they see only the latents
# and the timestep, up to the first cross-attention), computed once per batch instead of twice;
# transformer_in alone was ~30% of the cost of a video item on the tiny profile.
GUIDANCE_SHARED = (
    "conv_in",
    "transformer_in",
    "down_blocks.0.resnets.0",
    "down_blocks.0.temp_convs.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1",  # self-attention, before the first cross
)


class VideoDecoder(PipelineDecoder[TextToVideoSDPipeline]):
    """Zeroscope / ModelScope text-to-video loaded from a local diffusers directory; `decode` gives one MP4
    (options.num_frames frames at options.fps) per row of its (B, 77, D) conditioning."""

    PIPELINE = TextToVideoSDPipeline
    MODALITY = "video"
    GUIDANCE_SHARED = GUIDANCE_SHARED

    @property
    def cond_shape(self) -> tuple[int, int]:
        """(tokens, width) of the text states the 3D UNet cross-attends to, e.g. (77, 1024)."""
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
        """The pipeline call of `decode`: (B, T, H, W, 3) float frames in [0, 1], not yet encoded.

        `should_stop` is polled after every denoising step; once it returns True the call raises
        `Stopped` (a served batch whose requests were all cancelled).
        """
        # 1. Check inputs.
        check_cond(cond, self.cond_shape, "video")
        if options.num_frames < 1 or options.fps < 1:
            raise InvalidInput(f"num_frames={options.num_frames} and fps={options.fps} must be >= 1")
        batch = cond.shape[0]
        per_item = item_seeds(batch, seed, seeds)
        with self._lock:
            # 2. Conditioning and the empty-prompt negative on the compute device.
            device = execution_device(self.pipe)
            cond = cond.to(device=device, dtype=self.pipe.text_encoder.dtype)  # (B, 77, D)
            negative = self.negative_embeds.expand(batch, -1, -1)  # (B, 77, D)
            # 3. Denoise and decode latents frame by frame.
            self.pipe.set_progress_bar_config(disable=not progress)
            with torch.no_grad():
                videos: np.ndarray = self.pipe(
                    prompt_embeds=cond,
                    negative_prompt_embeds=negative,
                    height=options.height,
                    width=options.width,
                    num_frames=options.num_frames,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance_scale,
                    generator=make_generators(device, per_item),
                    output_type="np",
                    **stop_on_step(should_stop),
                ).frames  # (B, T, H, W, 3) float in [0, 1]
        return videos

    def to_media(self, videos: np.ndarray, options: DecodeDefaults) -> list[MediaItem]:
        """(B, T, H, W, 3) floats -> one H.264 MP4 each at options.fps (one uint8 conversion for the batch,
        then one file each)."""
        frames = to_uint8(videos)  # (B, T, H, W, 3) uint8
        return [MediaItem("video", encode_mp4(video, fps=options.fps), MP4_MIME) for video in frames]
