"""Each stage trains exactly its parameters; everything else (old embedding rows included) stays put."""

from __future__ import annotations

import pytest
import torch

from nextgpt.training.collate import Batch, OutputItem
from nextgpt.training.model import TrainableNextGPT
from nextgpt.training.trainables import set_trainables

EMBED = "llm.base_model.model.model.embed_tokens.weight"
HEAD = "llm.base_model.model.lm_head.weight"


@pytest.fixture(scope="module")
def model(tiny_profile) -> TrainableNextGPT:
    return TrainableNextGPT.build(tiny_profile, init=None, lora=None, seed=0)


def _expected(model: TrainableNextGPT, stage: str) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    inp = {n for n in names if n.startswith("input_projector.")}
    out = {n for n in names if n.startswith("output_projectors.")}
    lora = {n for n in names if ".lora_" in n}
    return {
        "encoder": inp | {EMBED},
        "decoder": out | {EMBED, HEAD},
        "instruct": inp | out | lora | {EMBED, HEAD},
    }[stage]


@pytest.mark.parametrize("stage", ["encoder", "decoder", "instruct"])
def test_exact_trainable_set(model: TrainableNextGPT, stage: str) -> None:
    chosen = set_trainables(model, stage)
    try:
        got = {n for n, p in model.named_parameters() if p.requires_grad}
        assert got == set(chosen.params) == _expected(model, stage)
        # The embedding matrices are row-masked: only the 38 legacy signal/wrapper rows learn.
        assert chosen.row_masks == {n: model.base_vocab for n in got & {EMBED, HEAD}}
        assert model.base_vocab == 1000
        lora = [n for n in got if ".lora_" in n]
        if stage == "instruct":  # q/k/v/o x A/B x 2 layers
            assert len(lora) == 16 and {n.split(".")[-4] for n in lora} == {
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
            }
        summary = chosen.summary()
        assert f"stage {stage}: {chosen.count:,} trainable parameters" in summary
        assert "new token rows only" in summary
    finally:
        chosen.remove_hooks()


def _batch(model: TrainableNextGPT) -> Batch:
    """Prompt + image span + stop, with one medium and one aligned output."""
    ids = model.lm.ids
    span = list(ids.spans["image"])
    seq = [1, 5, 6, ids.wrapper[0], 0, ids.wrapper[1], 7, 8, *span, 9]  # type: ignore[index]
    labels = [-100] * 8 + [*span, 9]
    proj = model.profile.output_projectors["image"]
    target = torch.randn(proj.num_queries, proj.out_dim, generator=torch.Generator().manual_seed(1))
    return Batch(
        input_ids=torch.tensor([seq]),
        attention_mask=torch.ones(1, len(seq), dtype=torch.long),
        labels=torch.tensor([labels]),
        media_pos=[(0, 4)],
        media_embeds=torch.randn(1, model.profile.encoder.embed_dim),
        outputs=[OutputItem(0, 8, "image", target)],
    )


@pytest.mark.parametrize("stage", ["encoder", "decoder", "instruct"])
def test_frozen_parameters_do_not_change(tiny_profile, stage: str) -> None:
    model = TrainableNextGPT.build(tiny_profile, init=None, lora=None, seed=0)
    chosen = set_trainables(model, stage)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(list(chosen.params.values()), lr=1e-2)
    for _ in range(2):
        losses = model(_batch(model))
        (losses["ce"] + losses["align"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = set()
    for name, p in model.named_parameters():
        if name in chosen.row_masks:
            first = chosen.row_masks[name]
            assert torch.equal(p[:first], before[name][:first]), f"{name}: old rows changed"
            if not torch.equal(p[first:], before[name][first:]):
                changed.add(name)
        elif name not in chosen.params:
            assert torch.equal(p, before[name]), f"{name} is frozen in stage {stage} but changed"
        elif not torch.equal(p, before[name]):
            changed.add(name)
    # Every trained group moved (LoRA B starts at zero, so A moves only from the second step on).
    assert {n.split(".")[0] for n in changed} == {n.split(".")[0] for n in chosen.params}
    if stage != "encoder":
        assert HEAD in changed
    chosen.remove_hooks()


def test_alignment_weighs_each_modality_alike(model: TrainableNextGPT) -> None:
    """An image span (77 target rows) and an audio span (1 row) in one batch: "align" is the mean of the
    two modalities' mean distances, so the audio span counts as much as the image span (a mean over all
    rows gave it 1/78 of the say, and the shared LoRA learned nothing of audio requests)."""
    from nextgpt.training.losses import alignment_distance

    ids = model.lm.ids
    image_span, audio_span = list(ids.spans["image"]), list(ids.spans["audio"])
    seq = [1, 5, 6, *image_span, 7, *audio_span, 9]
    labels = [-100] * 3 + [*image_span, 7, *audio_span, 9]
    gen = torch.Generator().manual_seed(2)
    targets = {
        m: torch.randn(
            model.profile.output_projectors[m].num_queries,
            model.profile.output_projectors[m].out_dim,
            generator=gen,
        )
        for m in ("image", "audio")
    }
    if model.profile.output_projectors["audio"].num_queries == 1:
        targets["audio"] = targets["audio"][0]  # (D,): the audio projector's one row
    audio_start = 3 + len(image_span) + 1
    batch = Batch(
        input_ids=torch.tensor([seq]),
        attention_mask=torch.ones(1, len(seq), dtype=torch.long),
        labels=torch.tensor([labels]),
        media_pos=[],
        media_embeds=None,
        outputs=[
            OutputItem(0, 3, "image", targets["image"]),
            OutputItem(0, audio_start, "audio", targets["audio"]),
        ],
    )
    model.eval()
    with torch.no_grad():
        losses = model(batch)
        hidden = model.llm(
            inputs_embeds=model.embedding()(batch.input_ids), output_hidden_states=True
        ).hidden_states[-1]
        embeds = model.embedding()(batch.input_ids)
        expected = {}
        for m, start, span in (("image", 3, image_span), ("audio", audio_start, audio_span)):
            h, e = hidden[:, start : start + len(span)], embeds[:, start : start + len(span)]
            expected[m] = alignment_distance(model.output_projectors[m](h, e)[0], targets[m])
    for m in ("image", "audio"):
        torch.testing.assert_close(losses[f"align_{m}"], expected[m])
    torch.testing.assert_close(losses["align"], (expected["image"] + expected["audio"]) / 2)
