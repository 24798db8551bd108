"""Audio decoder: AudioLDM driven by the audio output projector's CLAP-space embedding, written as WAV.

AudioLDM conditions its UNet on the CLAP *text projection* (one D-vector per prompt, 512 for
AudioLDM-l-full), used as class labels rather than cross-attention states. The pipeline L2-normalises
the embeddings it computes itself but not the ones passed in, so this decoder normalises `cond`, the
negative embedding and the `encode_text` targets the same way. The text encoder stays loaded even though
prompts are never tokenised at decode time: the pipeline reads its dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# From its module, not `diffusers`: the package's TYPE_CHECKING branch types the lazy names as dummies.
from diffusers.pipelines.deprecated.audioldm.pipeline_audioldm import AudioLDMPipeline

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
from nextgpt.media.encode import WAV_MIME, encode_wav
from nextgpt.types import MediaItem

logger = logging.getLogger(__name__)

# UNet modules whose two classifier-free-guidance halves carry equal values, computed once per batch
# instead of twice. The class embedding (the CLAP vector) enters every resnet: only conv_in qualifies.
GUIDANCE_SHARED = ("conv_in",)


class AudioDecoder(PipelineDecoder[AudioLDMPipeline]):
    """AudioLDM (CLAP text projection -> latent diffusion over mel -> HiFi-GAN) from a local directory;
    `decode` gives one WAV (options.audio_seconds at the vocoder's rate, 16 kHz) per row of its (B, D)
    conditioning (the projector's (B, 1, D) is accepted too)."""

    PIPELINE = AudioLDMPipeline
    MODALITY = "audio"
    GUIDANCE_SHARED = GUIDANCE_SHARED

    @property
    def cond_shape(self) -> tuple[int]:
        """(D,): width of the CLAP text projection, e.g. (512,)."""
        return (self.pipe.text_encoder.config.projection_dim,)

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vocoder.config.sampling_rate)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> torch.Tensor:
        """As the pipeline encodes a prompt: padded to the tokenizer's max length, with attention mask,
        CLAP `text_embeds`, then L2-normalised."""
        device = execution_device(self.pipe)
        tokens = self.pipe.tokenizer(
            captions,
            padding="max_length",
            max_length=self.pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        out = self.pipe.text_encoder(
            tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        )
        return F.normalize(out.text_embeds, dim=-1)  # (B, D)

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
        """The pipeline call of `decode`: (B, samples) float waveforms, not yet encoded.

        `should_stop` is polled after every denoising step; once it returns True the call raises
        `Stopped` (a served batch whose requests were all cancelled).
        """
        # 1. Check inputs; the audio projector has one query row, so (B, 1, D) is squeezed.
        if isinstance(cond, torch.Tensor) and cond.ndim == 3 and cond.shape[1] == 1:
            cond = cond[:, 0]
        check_cond(cond, self.cond_shape, "audio")
        if options.audio_seconds <= 0:
            raise InvalidInput(f"audio_seconds={options.audio_seconds} must be positive")
        batch = cond.shape[0]
        per_item = item_seeds(batch, seed, seeds)
        with self._lock:
            # 2. Normalised conditioning (the pipeline won't) and the empty-prompt negative.
            device = execution_device(self.pipe)
            cond = F.normalize(cond.to(device=device, dtype=self.pipe.text_encoder.dtype), dim=-1)  # (B, D)
            negative = self.negative_embeds.expand(batch, -1)  # (B, D)
            # 3. Denoise the mel latents, decode to a mel spectrogram, vocode.
            self.pipe.set_progress_bar_config(disable=not progress)
            with torch.no_grad():
                audios: np.ndarray = self.pipe(
                    prompt_embeds=cond,
                    negative_prompt_embeds=negative,
                    audio_length_in_s=options.audio_seconds,
                    num_inference_steps=options.steps,
                    guidance_scale=options.guidance_scale,
                    generator=make_generators(device, per_item),
                    output_type="np",
                    **stop_on_step(should_stop),
                ).audios  # (B, N) float
        return audios

    def to_media(self, audios: np.ndarray, options: DecodeDefaults) -> list[MediaItem]:
        """(B, samples) floats -> one 16-bit WAV each at the vocoder's rate."""
        rate = self.sample_rate
        return [MediaItem("audio", encode_wav(audio, sample_rate=rate), WAV_MIME) for audio in audios]
