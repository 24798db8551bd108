"""Proto <-> core types. Values are validated by the core dataclasses; their errors become
INVALID_ARGUMENT through the error interceptor."""

from __future__ import annotations

from nextgpt._proto import common_pb2
from nextgpt.config import DecodeOptions, GenerationOptions
from nextgpt.errors import ConfigError, InvalidInput
from nextgpt.types import MediaItem, Modality, Role

MODALITY_TO_PROTO: dict[str, common_pb2.Modality] = {
    "text": common_pb2.MODALITY_TEXT,
    "image": common_pb2.MODALITY_IMAGE,
    "video": common_pb2.MODALITY_VIDEO,
    "audio": common_pb2.MODALITY_AUDIO,
}
PROTO_TO_MODALITY: dict[int, str] = {v: k for k, v in MODALITY_TO_PROTO.items()}
PROTO_TO_MEDIA: dict[int, Modality] = {
    common_pb2.MODALITY_IMAGE: "image",
    common_pb2.MODALITY_VIDEO: "video",
    common_pb2.MODALITY_AUDIO: "audio",
}
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


def decode_options_from_proto(message: common_pb2.DecodeOptions) -> DecodeOptions:
    return DecodeOptions(**{f: getattr(message, f) for f in _DECODE_FIELDS if message.HasField(f)})


def decode_options_to_proto(options: DecodeOptions) -> common_pb2.DecodeOptions:
    return common_pb2.DecodeOptions(
        **{f: getattr(options, f) for f in _DECODE_FIELDS if getattr(options, f) is not None}
    )


_GEN_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed", "max_media_per_modality")


def generation_options_from_proto(message: common_pb2.GenerationOptions) -> GenerationOptions:
    """Unset fields take `GenerationOptions` defaults; bad values raise InvalidInput naming them."""
    kwargs: dict = {f: getattr(message, f) for f in _GEN_FIELDS if message.HasField(f)}
    modalities = [modality_from_proto(m, "options.modalities") for m in message.modalities]
    kwargs["modalities"] = tuple(dict.fromkeys(["text", *modalities]))
    try:
        return GenerationOptions(
            **kwargs,
            image=decode_options_from_proto(message.image),
            video=decode_options_from_proto(message.video),
            audio=decode_options_from_proto(message.audio),
        )
    except ConfigError as exc:
        raise InvalidInput(f"options: {exc}") from exc


def generation_options_to_proto(options: GenerationOptions, lora: str = "") -> common_pb2.GenerationOptions:
    message = common_pb2.GenerationOptions(
        modalities=[MODALITY_TO_PROTO[m] for m in options.modalities if m != "text"],
        image=decode_options_to_proto(options.image),
        video=decode_options_to_proto(options.video),
        audio=decode_options_to_proto(options.audio),
        lora=lora,
    )
    for f in _GEN_FIELDS:
        value = getattr(options, f)
        if value is not None:
            setattr(message, f, value)
    return message
