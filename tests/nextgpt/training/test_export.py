"""Trained weights load back: own format round trip, and the legacy `pytorch_model.pt` through
`NextGPT.from_profile` gives the same LLM and projector outputs as the trained model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nextgpt.config import GenerationOptions
from nextgpt.llm.prompt import build_prompt
from nextgpt.pipeline import NextGPT
from nextgpt.training.export import export_legacy, load_run, save_run
from nextgpt.training.model import TrainableNextGPT
from nextgpt.training.trainables import set_trainables
from nextgpt.types import Message


@pytest.fixture(scope="module")
def trained(tiny_profile) -> TrainableNextGPT:
    """A model whose every trainable part moved away from its init (a stand-in for a finished run)."""
    model = TrainableNextGPT.build(tiny_profile, init=None, lora=None, seed=3)
    chosen = set_trainables(model, "instruct")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in chosen.params.items():
            first = chosen.row_masks.get(name, 0)
            p[first:] += torch.randn(p[first:].shape, generator=gen) * 0.05
    chosen.remove_hooks()
    return model.eval()


def test_own_format_round_trip(trained: TrainableNextGPT, tiny_profile, tmp_path: Path) -> None:
    save_run(trained, tmp_path / "final", {"stage": "instruct"})
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    again = load_run(tmp_path, tiny_profile)
    want, got = trained.trainable_state(), again.trainable_state()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(trained.embedding().weight, again.embedding().weight)


def test_legacy_export_loads_into_pipeline_with_identical_outputs(
    trained: TrainableNextGPT, tiny_profile, tmp_path: Path
) -> None:
    path = export_legacy(trained, tmp_path / "pytorch_model.pt")
    pipe = NextGPT.from_profile(dataclasses.replace(tiny_profile, delta_checkpoint=path), decoders=())
    segments = build_prompt([Message("user", "Show me a picture of a red star.")], [[]], "legacy")
    prompt = pipe.llm.embed(segments).embeds
    out = pipe.llm.generate(prompt, GenerationOptions(seed=0, max_new_tokens=12), force=["image"])
    (span,) = out.spans
    # The same sequence through the trained model (teacher-forced) gives the same states and projection.
    with torch.no_grad():
        ids = torch.tensor([out.token_ids])
        embeds = torch.cat([prompt, trained.embedding()(ids)[0]])[None]
        states = trained.llm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][0]
        start = prompt.shape[0] + span.start
        hidden = states[start : start + 4]
        torch.testing.assert_close(hidden, span.hidden, rtol=1e-4, atol=1e-5)
        want = trained.output_projectors["image"](
            hidden[None], trained.embedding()(torch.tensor(span.token_ids))[None]
        )
        got = pipe.project_spans("image", [span])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # and the input projector is the trained one
    x = torch.randn(1, tiny_profile.encoder.embed_dim)
    torch.testing.assert_close(pipe.input_projector(x), trained.input_projector(x))
