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
