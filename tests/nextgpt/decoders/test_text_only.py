"""`load(text_only=True)`: the text encoder alone, for stage-2 targets (a training stage need not hold
a UNet and a VAE), from a whole pipeline or from a folder holding only the text encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nextgpt.config import DecoderConfig
from nextgpt.errors import ModelNotReady
from nextgpt.modalities import OUTPUTS

CAPTIONS = ["a red circle on a black background", "a high tone"]


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_text_only_encodes_as_the_whole_decoder_and_refuses_to_decode(
    modality: str, tiny_pipelines: dict[str, Path], tmp_path: Path
) -> None:
    decoder_class = OUTPUTS[modality].decoder_class()
    whole = decoder_class.load(DecoderConfig(pipeline_dir=tiny_pipelines[modality]))
    text = decoder_class.load(DecoderConfig(pipeline_dir=tiny_pipelines[modality]), text_only=True)
    assert text.text_only and not whole.text_only
    assert text.pipe.unet is None and text.pipe.vae is None
    assert torch.equal(text.encode_text(CAPTIONS), whole.encode_text(CAPTIONS))
    with pytest.raises(ModelNotReady, match="text-only"):
        text.decode(text.encode_text(CAPTIONS[:1]), text.defaults, seed=0)
    # a folder with nothing but the text encoder, the tokenizer and the index loads the same way
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model_index.json", "text_encoder", "tokenizer"):
        source = tiny_pipelines[modality] / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, alone / name)
    again = decoder_class.load(DecoderConfig(pipeline_dir=alone), text_only=True)
    assert torch.equal(again.encode_text(CAPTIONS), whole.encode_text(CAPTIONS))
