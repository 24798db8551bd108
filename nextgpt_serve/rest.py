"""A small client of the gateway's REST API (OpenAI chat completions), for the CLI and the demo: core types
in, core types out, the server's own error message on failure."""

from __future__ import annotations

import base64

import httpx

from nextgpt.config import GenerationOptions
from nextgpt.errors import NextGPTError, from_label
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, GenerateResult, MediaError, MediaItem, Modality

DEFAULT_SERVER = "http://127.0.0.1:8000"
PART_MODALITY: dict[str, Modality] = {out.openai_part: m for m, out in OUTPUTS.items()}


def server_answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a gateway answers `GET /healthz` at `url` (a quick probe: nothing listening is an instant
    refusal on this machine)."""
    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def content_parts(media: list[MediaItem]) -> list[dict]:
    """Media as OpenAI content parts: images and videos as data URLs, audio as `input_audio`."""
    parts = []
    for item in media:
        encoded = base64.b64encode(item.data).decode()
        if item.modality == "audio":
            fmt = item.mime_type.rsplit("/", 1)[-1].removeprefix("x-").replace("mpeg", "mp3")
            parts.append({"type": "input_audio", "input_audio": {"data": encoded, "format": fmt}})
        else:
            kind = OUTPUTS[item.modality].openai_part
            parts.append({"type": kind, kind: {"url": f"data:{item.mime_type};base64,{encoded}"}})
    return parts


def chat_body(prompt: str, media: list[MediaItem], options: GenerationOptions, model: str) -> dict:
    """The request body of one user turn with `options` in OpenAI's fields plus the `nextgpt` extras."""
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}, *content_parts(media)]}],
        "modalities": list(options.modalities),
        "max_tokens": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
    }
    if options.seed is not None:
        body["seed"] = options.seed
    extras: dict = {m: values for m in MODALITIES if (values := _set(options.decode_options(m)))}
    if options.lora:
        extras["lora"] = options.lora
    if extras:
        body["nextgpt"] = extras
    return body


def chat(url: str, body: dict, *, api_key: str | None = None, timeout_s: float = 300.0) -> GenerateResult:
    """POST the body; the reply's text and media, or the server's error as a `NextGPTError`."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise NextGPTError(f"the gateway at {url} did not answer: {exc}") from exc
    if response.status_code != 200:
        try:
            error = response.json()["error"]
            message, code = error["message"], str(error.get("code") or "")
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:500], ""
        retry_after = response.headers.get("retry-after", "")
        retry_after_s = float(retry_after) if retry_after.isdigit() else None
        raise from_label(code, f"HTTP {response.status_code}: {message}", retry_after_s)
    reply = response.json()
    choice = reply["choices"][0]
    info = reply.get("nextgpt") or {}
    usage = reply.get("usage") or {}
    text = reply_text(choice["message"])
    return GenerateResult(
        text=text,
        raw_text=text,  # the API returns the visible text; the server restores signal tokens from `media`
        media=reply_media(choice["message"]),
        errors=[MediaError(e["modality"], e["message"]) for e in info.get("errors", [])],
        warnings=list(info.get("warnings", [])),
        finish_reason=choice.get("finish_reason") or "stop",
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        forced_modalities=list(info.get("forced_modalities", [])),
        timings=dict(info.get("timings", {})),
    )


def reply_text(message: dict) -> str:
    if isinstance(message["content"], str):
        return message["content"]
    return "".join(p["text"] for p in message["content"] or [] if p["type"] == "text")


def reply_media(message: dict) -> list[MediaItem]:
    found = []
    for part in message["content"] if isinstance(message["content"], list) else []:
        if modality := PART_MODALITY.get(part["type"]):
            header, data = part[part["type"]]["url"].split(",", 1)
            mime = header.removeprefix("data:").split(";")[0]
            found.append(MediaItem(modality, base64.b64decode(data), mime))
    if message.get("audio"):
        found.append(MediaItem("audio", base64.b64decode(message["audio"]["data"]), "audio/wav"))
    return found


def _set(options: object) -> dict:
    """The fields of a DecodeOptions that are set (None means: the server's default)."""
    return {k: v for k, v in vars(options).items() if v is not None}
