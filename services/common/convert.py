"""Proto <-> core types. Values are validated by the core dataclasses; their errors become
INVALID_ARGUMENT through the error interceptor."""

from __future__ import annotations

from typing import Any

from nextgpt._proto import common_pb2, llm_pb2
from nextgpt.config import DecodeOptions, GenerationOptions, SamplingOptions
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.types import MODALITIES, MediaItem, Modality, Role

MODALITY_TO_PROTO: dict[str, common_pb2.Modality] = {
    m: getattr(common_pb2, f"MODALITY_{m.upper()}") for m in ("text", *MODALITIES)
}
"""Each modality's proto enum value: `MODALITY_<NAME>` of common.proto's `Modality`."""
PROTO_TO_MODALITY: dict[int, str] = {v: k for k, v in MODALITY_TO_PROTO.items()}
PROTO_TO_MEDIA: dict[int, Modality] = {MODALITY_TO_PROTO[m]: m for m in MODALITIES}
"""`PROTO_TO_MODALITY` without text: the modalities of media."""
ROLE_TO_PROTO: dict[Role, common_pb2.Role] = {
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
PROTO_TO_ROLE: dict[int, Role] = {v: k for k, v in ROLE_TO_PROTO.items()}


def modality_from_proto(value: int, what: str = "modality") -> str:
    try:
        return PROTO_TO_MODALITY[value]
    except KeyError:
        raise InvalidInput(f"{what} is unset or unknown ({value}); use MODALITY_IMAGE/VIDEO/AUDIO") from None


def media_modality_from_proto(value: int, what: str = "media.modality") -> Modality:
    modality = modality_from_proto(value, what)
    if modality == "text":
        raise InvalidInput(f"{what}: MODALITY_TEXT is not a medium; send text as text")
    return PROTO_TO_MEDIA[value]


def role_from_proto(value: int, what: str = "role") -> Role:
    try:
        return PROTO_TO_ROLE[value]
    except KeyError:
        raise InvalidInput(f"{what} is unset or unknown ({value}); use ROLE_USER or ROLE_ASSISTANT") from None


def media_from_proto(message: common_pb2.Media, what: str = "media") -> MediaItem:
    modality = media_modality_from_proto(message.modality, f"{what}.modality")
    return MediaItem(modality=modality, data=message.data, mime_type=message.mime_type)


def media_to_proto(item: MediaItem) -> common_pb2.Media:
    return common_pb2.Media(
        modality=MODALITY_TO_PROTO[item.modality], data=item.data, mime_type=item.mime_type
    )


_DECODE_FIELDS = ("steps", "guidance_scale", "height", "width", "num_frames", "fps", "audio_seconds")
_SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed")
_GEN_FIELDS = (*_SAMPLING_FIELDS, "max_media_per_modality")


def _set_fields(message: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The fields of `message` that are set (unset ones keep the dataclass defaults)."""
    return {f: getattr(message, f) for f in fields if message.HasField(f)}


def _copy_fields(message: Any, options: Any, fields: tuple[str, ...]) -> Any:
    """`message` with the fields of `options` that are not None."""
    for f in fields:
        value = getattr(options, f)
        if value is not None:
            setattr(message, f, value)
    return message


def decode_options_from_proto(message: common_pb2.DecodeOptions) -> DecodeOptions:
    return DecodeOptions(**_set_fields(message, _DECODE_FIELDS))


def decode_options_to_proto(options: DecodeOptions) -> common_pb2.DecodeOptions:
    return _copy_fields(common_pb2.DecodeOptions(), options, _DECODE_FIELDS)


def generation_options_from_proto(message: common_pb2.GenerationOptions) -> GenerationOptions:
    """Unset fields take `GenerationOptions` defaults; bad values raise InvalidInput naming them."""
    kwargs = _set_fields(message, _GEN_FIELDS)
    try:
        return GenerationOptions(
            **kwargs,
            modalities=tuple(modality_from_proto(m, "options.modalities") for m in message.modalities),
            image=decode_options_from_proto(message.image),
            video=decode_options_from_proto(message.video),
            audio=decode_options_from_proto(message.audio),
            lora=message.lora or None,
        )
    except ConfigError as exc:
        raise InvalidInput(f"options: {exc}") from exc


def generation_options_to_proto(options: GenerationOptions) -> common_pb2.GenerationOptions:
    message = common_pb2.GenerationOptions(
        modalities=[MODALITY_TO_PROTO[m] for m in options.modalities],
        image=decode_options_to_proto(options.image),
        video=decode_options_to_proto(options.video),
        audio=decode_options_to_proto(options.audio),
        lora=options.lora or "",
    )
    return _copy_fields(message, options, _GEN_FIELDS)


def sampling_options_from_proto(message: llm_pb2.SamplingOptions) -> SamplingOptions:
    try:
        return SamplingOptions(**_set_fields(message, _SAMPLING_FIELDS))
    except ConfigError as exc:
        raise InvalidInput(f"sampling: {exc}") from exc


def sampling_options_to_proto(options: SamplingOptions) -> llm_pb2.SamplingOptions:
    return _copy_fields(llm_pb2.SamplingOptions(), options, _SAMPLING_FIELDS)
