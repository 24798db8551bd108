"""OpenAI-compatible request and response types of the REST API (pydantic), as in vLLM's protocol.py.

Requests accept what OpenAI and vLLM accept for multimodal chat (`image_url` / `video_url` data URLs,
`input_audio`), plus NExT-GPT's own options in an extra `nextgpt` object. Responses carry generated media
the way vLLM-Omni returns them: image/video as content parts, audio in `message.audio`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nextgpt.config import MAX_AUDIO_SECONDS, MAX_FRAMES, MAX_PIXEL_STEPS, MAX_SIDE, MAX_STEPS

# --- request -----------------------------------------------------------------------------------------


class _Strict(BaseModel):
    """NExT-GPT's own objects reject unknown fields, so a typo is a 400 naming the field."""

    model_config = ConfigDict(extra="forbid")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class URL(BaseModel):
    url: str
    """A data: URL (`data:image/png;base64,...`); the gateway does not fetch remote URLs."""
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: URL


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: URL


class AudioURLPart(BaseModel):
    type: Literal["audio_url"]
    audio_url: URL


class InputAudio(BaseModel):
    data: str
    """Base64 of the whole file."""
    format: str
    """wav, mp3, flac or ogg."""


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[
    TextPart | ImagePart | VideoPart | AudioURLPart | AudioPart, Field(discriminator="type")
]


class MessageAudio(BaseModel):
    """An assistant turn's audio sent back as history: the `message.audio` this API returned."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    data: str | None = None
    format: str | None = "wav"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None
    audio: MessageAudio | None = None
    name: str | None = None


_BUDGET = (
    f"steps x height x width (x num_frames) of one medium may not exceed {MAX_PIXEL_STEPS:_}, nor the "
    "sum over the requested media x max_media_per_modality (unset options count at 50 steps, 512x512, 24 "
    "frames); over it the request is a 400 naming the budget."
)
_STEPS = Field(default=None, description=f"Diffusion steps, 1..{MAX_STEPS} (default per profile; real 50).")
_SIDE = f"pixels, a multiple of 8 in 8..{MAX_SIDE}"


class ImageOptions(_Strict):
    __doc__ = f"Image decoding options. {_BUDGET}"

    steps: int | None = _STEPS
    guidance_scale: float | None = None
    height: int | None = Field(default=None, description=f"Output height in {_SIDE}.")
    width: int | None = Field(default=None, description=f"Output width in {_SIDE}.")


class VideoOptions(ImageOptions):
    __doc__ = f"Video decoding options. {_BUDGET}"

    num_frames: int | None = Field(default=None, description=f"Frames, 1..{MAX_FRAMES} (real default 24).")
    fps: int | None = Field(default=None, description="Frames per second of the MP4, 1..60.")


class AudioOptions(_Strict):
    """Audio decoding options."""

    steps: int | None = _STEPS
    guidance_scale: float | None = None
    audio_seconds: float | None = Field(
        default=None, description=f"Length in seconds, (0, {MAX_AUDIO_SECONDS:g}]."
    )


class NextGPTOptions(_Strict):
    """The extra `nextgpt` object of a request: diffusion settings per modality and the adapter."""

    image: ImageOptions = Field(default_factory=ImageOptions)
    video: VideoOptions = Field(default_factory=VideoOptions)
    audio: AudioOptions = Field(default_factory=AudioOptions)
    max_media_per_modality: int | None = None
    """Signal spans decoded per modality, 0..8 (default 1)."""
    lora: str | None = None
    """LoRA adapter name (see GET /v1/models); `model` may name one instead."""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields NExT-GPT does not use are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    """The served model name or a LoRA adapter name (vLLM's convention)."""
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    modalities: list[str] | None = None
    """Requested outputs, e.g. ["text", "image"]; every listed medium is guaranteed."""
    stream: bool = False
    n: int | None = None
    nextgpt: NextGPTOptions | None = None


# --- response ----------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def error_response(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    """An OpenAI-style error body with its HTTP status."""
    body = ErrorResponse(error=ErrorInfo(message=message, type=kind, code=code, param=param))
    return JSONResponse(body.model_dump(), status_code=status)


class ChatCompletionAudio(BaseModel):
    id: str
    data: str
    """Base64 WAV (16 kHz)."""
    format: str = "wav"
    expires_at: int
    transcript: str = ""


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | list[dict[str, Any]] | None = None
    """A plain string without generated media; else parts: text, image_url, video_url (data URLs)."""
    audio: ChatCompletionAudio | None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: None = None


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class MediaErrorInfo(BaseModel):
    modality: str
    message: str


class NextGPTInfo(BaseModel):
    """The extra `nextgpt` object of a response: what did not work, and where the time went."""

    errors: list[MediaErrorInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    forced_modalities: list[str] = Field(default_factory=list)
    request_id: str = ""


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageInfo
    nextgpt: NextGPTInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    nextgpt: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nextgpt"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
