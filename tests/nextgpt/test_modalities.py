"""The modality table (`nextgpt.modalities.OUTPUTS`) is the one place a modality is described: these
check that it agrees with the `Modality` type and the proto enum, and that what the rest of the code
derives from it is what the released checkpoints and the documented ports expect."""

from __future__ import annotations

import typing

import pytest

from nextgpt._proto import common_pb2
from nextgpt.checkpoint import OUTPUT_PREFIXES
from nextgpt.config import PIXEL_STEP_MODALITIES
from nextgpt.llm.signal_tokens import LEGACY, V15
from nextgpt.modalities import OUTPUTS
from nextgpt.profiles import load_profile
from nextgpt.types import MODALITIES, Modality
from services.common import ports
from services.common.convert import MODALITY_TO_PROTO, PROTO_TO_MEDIA


def test_the_table_lists_every_modality_of_the_type_and_the_proto():
    assert tuple(OUTPUTS) == MODALITIES == typing.get_args(Modality)
    assert set(PROTO_TO_MEDIA.values()) == set(MODALITIES)
    proto_names = set(common_pb2.Modality.keys()) - {"MODALITY_UNSPECIFIED", "MODALITY_TEXT"}
    assert proto_names == {f"MODALITY_{m.upper()}" for m in MODALITIES}
    assert MODALITY_TO_PROTO["image"] == common_pb2.MODALITY_IMAGE


def test_signal_tokens_are_those_of_the_released_checkpoints():
    assert LEGACY.tokens["image"] == ("[IMG0]", "[IMG1]", "[IMG2]", "[IMG3]")
    assert LEGACY.tokens["video"][-1] == "[VID23]" and len(LEGACY.tokens["audio"]) == 8
    assert V15.tokens["video"][:2] == ("<video_00>", "<video_01>") and V15.tokens["audio"][-1] == "<audio_07>"


def test_checkpoint_prefixes_ports_and_budgets_come_from_the_table():
    assert OUTPUT_PREFIXES == {
        "image": "gen_text_hidden_fcs.0.",
        "video": "gen_text_hidden_fcs_video.0.",
        "audio": "gen_text_hidden_fcs_audio.0.",
    }
    assert ports.DECODERS == {"image": 50063, "video": 50064, "audio": 50065}
    assert ports.DECODER_METRICS == {"image": 9163, "video": 9164, "audio": 9165}
    assert PIXEL_STEP_MODALITIES == ("image", "video")
    assert [OUTPUTS[m].openai_part for m in MODALITIES] == ["image_url", "video_url", "audio_url"]


@pytest.mark.parametrize("name", ["tiny", "nextgpt-7b-tiva-v0"])
def test_profiles_take_span_lengths_and_conditioning_from_the_table(name, tmp_path):
    profile = load_profile(name, models_dir=tmp_path)
    for m, out in OUTPUTS.items():
        projector = profile.output_projectors[m]
        assert projector.num_signal_tokens == out.num_signal_tokens
        assert projector.num_queries == out.projector_queries
        assert projector.normalize == out.projector_normalize


def test_decoder_classes_import_on_demand():
    assert [OUTPUTS[m].decoder_class().__name__ for m in MODALITIES] == [
        "ImageDecoder",
        "VideoDecoder",
        "AudioDecoder",
    ]
