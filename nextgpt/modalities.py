"""The output modalities and everything that differs between them, in one table.

Profiles, checkpoints, signal tokens, the pipeline, the services' ports, the gateway and the clients
read `OUTPUTS` instead of spelling out image / video / audio each. A new output modality is a `Modality`
name (`nextgpt.types`), an entry here and its decoder class (`load(cfg)`, `decode_batch(...)`, like
`nextgpt.decoders.image.ImageDecoder`); tests/nextgpt/test_modalities.py checks that the table and the
`Modality` type agree.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias, cast

from nextgpt.types import MODALITIES, Modality

if TYPE_CHECKING:
    from nextgpt.decoders.audio import AudioDecoder
    from nextgpt.decoders.image import ImageDecoder
    from nextgpt.decoders.video import VideoDecoder

    Decoder: TypeAlias = ImageDecoder | VideoDecoder | AudioDecoder


@dataclass(frozen=True)
class OutputModality:
    name: Modality
    decoder: str
    """`module:Class` of its decoder, imported on first use (diffusers takes seconds to import)."""
    num_signal_tokens: int
    """N: signal tokens of one span; the LLM's hidden states of a span are (N, H)."""
    legacy_tag: str
    """Signal tokens of the legacy layout (NExT-GPT 7B v0): `[IMG0]`...`[IMG3]`."""
    v15_tag: str
    """Signal tokens of the v1.5 layout: `<image_00>`...`<image_03>`."""
    projector_prefix: str
    """Key prefix of its output projector in a NExT-GPT delta checkpoint."""
    projector_queries: int
    """Conditioning rows the output projector makes: the decoder's text-encoder length (77 CLIP tokens),
    or 1 for AudioLDM's pooled CLAP embedding."""
    projector_normalize: bool
    """The output is L2-normalised (AudioLDM conditions on a unit CLAP embedding)."""
    pixels: bool
    """height / width apply, and decodes count in the `max_pixel_steps` budgets."""
    frames: bool
    """num_frames / fps apply (a video)."""
    seconds: bool
    """audio_seconds applies."""
    decoder_port: int
    """Default gRPC port of its decoder service in the local cluster."""
    decoder_metrics_port: int
    """Default Prometheus port of its decoder service."""

    @property
    def openai_part(self) -> str:
        """The OpenAI content part type that carries it: `image_url`, `video_url`, `audio_url`."""
        return f"{self.name}_url"

    def signal_tokens(self, layout: str) -> tuple[str, ...]:
        """The span's token strings in a signal layout ("legacy" or "v1.5")."""
        n = range(self.num_signal_tokens)
        if layout == "legacy":
            return tuple(f"[{self.legacy_tag}{i}]" for i in n)
        return tuple(f"<{self.v15_tag}_{i:02d}>" for i in n)

    def decoder_class(self) -> type[Decoder]:
        module, _, name = self.decoder.partition(":")
        return cast("type[Decoder]", getattr(importlib.import_module(module), name))


OUTPUTS: dict[Modality, OutputModality] = {
    m.name: m
    for m in (
        OutputModality(
            name="image",
            decoder="nextgpt.decoders.image:ImageDecoder",
            num_signal_tokens=4,
            legacy_tag="IMG",
            v15_tag="image",
            projector_prefix="gen_text_hidden_fcs.0.",
            projector_queries=77,
            projector_normalize=False,
            pixels=True,
            frames=False,
            seconds=False,
            decoder_port=50063,
            decoder_metrics_port=9163,
        ),
        OutputModality(
            name="video",
            decoder="nextgpt.decoders.video:VideoDecoder",
            num_signal_tokens=24,
            legacy_tag="VID",
            v15_tag="video",
            projector_prefix="gen_text_hidden_fcs_video.0.",
            projector_queries=77,
            projector_normalize=False,
            pixels=True,
            frames=True,
            seconds=False,
            decoder_port=50064,
            decoder_metrics_port=9164,
        ),
        OutputModality(
            name="audio",
            decoder="nextgpt.decoders.audio:AudioDecoder",
            num_signal_tokens=8,
            legacy_tag="AUD",
            v15_tag="audio",
            projector_prefix="gen_text_hidden_fcs_audio.0.",
            projector_queries=1,
            projector_normalize=True,
            pixels=False,
            frames=False,
            seconds=True,
            decoder_port=50065,
            decoder_metrics_port=9165,
        ),
    )
}
assert tuple(OUTPUTS) == MODALITIES, "OUTPUTS must list every Modality, in MODALITIES order"
