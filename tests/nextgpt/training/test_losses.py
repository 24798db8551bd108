"""Losses and the tokenization they rely on: CE on the reply only, L2 (not squared) alignment, spans
found after media splicing, prompts tokenized exactly as inference does, denoising targets per
`prediction_type` on the tiny Stable Diffusion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextgpt.errors import InvalidInput
from nextgpt.llm.prompt import build_prompt
from nextgpt.training.collate import ExampleBuilder
from nextgpt.training.data.types import MediaRef, OutputRef, Turn
from nextgpt.training.losses import IGNORE_INDEX, Denoiser, alignment_distance, caption_ce, denoise_target
from nextgpt.training.model import TrainableNextGPT
from nextgpt.types import MediaItem, Message


@pytest.fixture(scope="module")
def model(tiny_profile) -> TrainableNextGPT:
    return TrainableNextGPT.build(tiny_profile, init=None, lora=None, seed=0)


@pytest.fixture(scope="module")
def builder(model: TrainableNextGPT) -> ExampleBuilder:
    return ExampleBuilder(model.lm, lambda ref: torch.ones(model.profile.encoder.embed_dim))


def test_alignment_is_euclidean_not_squared() -> None:
    pred = torch.zeros(2, 3, 4)
    target = torch.zeros(2, 3, 4)
    target[..., 0] = 3.0
    target[..., 1] = 4.0  # every token is at distance 5
    assert alignment_distance(pred, target).item() == pytest.approx(5.0)
    assert alignment_distance(torch.zeros(2, 8), torch.ones(2, 8)).item() == pytest.approx(8**0.5)
    with pytest.raises(ValueError, match="768 vs 1024"):
        alignment_distance(torch.zeros(1, 77, 768), torch.zeros(1, 77, 1024))


def test_ce_counts_only_labelled_positions() -> None:
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX]])
    want = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 4]))
    assert caption_ce(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
    assert caption_ce(logits, torch.full((1, 5), IGNORE_INDEX)).item() == 0.0


def test_prompt_tokens_match_inference(model: TrainableNextGPT, builder: ExampleBuilder) -> None:
    """The unlabelled prefix is exactly the token sequence inference embeds for the same request."""
    turns = [
        Turn("user", "<image>\nDescribe this image.", inputs=[MediaRef("image", Path("x.png"))]),
        Turn("assistant", "A red circle on a white background."),
    ]
    ex = builder.conversation(turns)
    prefix = [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label == IGNORE_INDEX]
    lm = model.lm
    segments = build_prompt(
        [Message("user", "Describe this image.", [MediaItem("image", b"", "")])],
        [[torch.zeros(1, 1)]],
        "legacy",
    )
    want: list[int] = []
    for i, seg in enumerate(segments):
        want += lm.encode(seg, first=i == 0) if isinstance(seg, str) else [builder.placeholder]
    assert prefix == want
    # labels: the reply and its stop string only; the medium sits between <Img> and </Img>
    reply = lm.encode(" A red circle on a white background.\n###", first=False)
    assert ex.labels[len(prefix) :] == reply
    ((start, _),) = ex.media
    assert ex.input_ids[start - 1] == lm.ids.wrapper[0] and ex.input_ids[start + 1] == lm.ids.wrapper[1]
    assert ex.labels[start] == IGNORE_INDEX


def test_spans_are_located_after_media_splicing(model: TrainableNextGPT, builder: ExampleBuilder) -> None:
    span = builder.span_text("image")
    turns = [
        Turn(
            "user",
            "<image> <audio> Draw it.",
            inputs=[MediaRef("image", Path("a.png")), MediaRef("audio", Path("b.wav"))],
        ),
        Turn("assistant", f"Sure! {span}", outputs=[OutputRef("image", "a red circle")]),
        Turn("user", "Again, as audio."),
        Turn("assistant", "Here: " + builder.span_text("audio"), outputs=[OutputRef("audio", "a high tone")]),
    ]
    ex = builder.conversation(turns)
    assert len(ex.media) == 2
    (s1, m1, c1), (s2, m2, c2) = ex.outputs
    assert (m1, c1, m2, c2) == ("image", "a red circle", "audio", "a high tone")
    ids = model.lm.ids
    assert ex.input_ids[s1 : s1 + 4] == list(ids.spans["image"])
    assert ex.input_ids[s2 : s2 + 8] == list(ids.spans["audio"])
    assert all(ex.labels[s] != IGNORE_INDEX for s in range(s1, s1 + 4))
    # a record whose outputs do not match its spans is refused, not mis-aligned
    bad = [turns[0], Turn("assistant", "No picture.", outputs=[OutputRef("image", "x")])]
    with pytest.raises(InvalidInput, match="spans"):
        builder.conversation(bad)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_denoising_loss_respects_prediction_type(tiny_profile, kind: str) -> None:
    from diffusers import DDPMScheduler

    from nextgpt.decoders.image import ImageDecoder

    decoder = ImageDecoder.load(tiny_profile.decoders["image"])
    scheduler = DDPMScheduler.from_config({**decoder.pipe.scheduler.config, "prediction_type": kind})
    denoiser = Denoiser(decoder.pipe.unet, decoder.pipe.vae, scheduler)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    target = denoise_target(scheduler, latents, noise, t)
    want = {"epsilon": noise, "v_prediction": scheduler.get_velocity(latents, noise, t), "sample": latents}[
        kind
    ]
    assert torch.equal(target, want)
    # the loss reaches the conditioning (the projector output), not the frozen UNet
    size = tiny_profile.decoders["image"].defaults.height
    pixels = torch.rand(2, 3, size, size) * 2 - 1
    cond = torch.randn(2, *decoder.cond_shape, requires_grad=True)
    loss = denoiser.loss(cond, denoiser.encode_images(pixels))
    loss.backward()
    assert torch.isfinite(loss) and cond.grad is not None and cond.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder.pipe.unet.parameters())
