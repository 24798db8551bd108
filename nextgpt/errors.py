"""Domain exceptions, and the one table that maps each to a gRPC status, an HTTP status and a metric label.

Every layer uses `status_of`: the services' interceptor (gRPC code), the gateway's REST errors (HTTP
status, OpenAI error type and code), its request metrics (label) and the gateway's reading of backend
codes (`from_grpc_code`). The core knows nothing of gRPC: codes are `grpc.StatusCode` names.

Messages say what was wrong *and* how to fix it; they travel to the user unchanged, so they never hold
internal addresses, Python reprs or paths. Errors a client may retry carry `retry_after_s`, sent as
HTTP `Retry-After` and gRPC `grpc-retry-pushback-ms`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""gRPC trailing metadata of a retryable refusal: milliseconds until a retry may succeed (the key gRPC's
own retry throttling reads)."""


class NextGPTError(Exception):
    """Base class of every error the core raises on purpose."""

    retry_after_s: float | None = None
    """Seconds after which a retry may succeed (None: retrying the same request will not help)."""

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class InvalidInput(NextGPTError):
    """The request is malformed (bad media, bad option value, over a budget)."""


class ConfigError(NextGPTError, ValueError):
    """A configuration value is out of bounds or names something that does not exist."""


class Unauthenticated(NextGPTError):
    """No API key, or a wrong one."""


class ModelNotFound(NextGPTError):
    """`model` names neither the served model nor an adapter (HTTP 404, as OpenAI and vLLM)."""


class ModelNotReady(NextGPTError):
    """A component is not loaded yet, is restarting or cannot be reached."""

    retry_after_s = 1.0


class Overloaded(NextGPTError):
    """Too many requests at once: the admission limit or a bounded queue is full."""

    retry_after_s = 1.0


class DeadlineExceeded(NextGPTError, TimeoutError):
    """The request's deadline passed while it was being served."""


class BackendError(NextGPTError):
    """A backend failed in a way that is not the client's fault."""


class CheckpointError(NextGPTError):
    """Weights on disk do not fit the configured model (wrong base, missing keys, shape mismatch)."""


@dataclass(frozen=True)
class ErrorStatus:
    """How one kind of error is reported on each surface."""

    grpc_code: str
    """`grpc.StatusCode` name."""
    http_status: int
    http_type: str
    """OpenAI-style error `type`."""
    label: str
    """Metric label and OpenAI-style error `code`."""


INTERNAL = ErrorStatus("INTERNAL", 500, "internal_error", "internal")
CANCELLED = ErrorStatus("CANCELLED", 499, "cancelled", "cancelled")

STATUS: dict[type[BaseException], ErrorStatus] = {
    # the first entry an exception is an instance of wins: subclasses before their bases
    ModelNotFound: ErrorStatus("NOT_FOUND", 404, "invalid_request_error", "model_not_found"),
    InvalidInput: ErrorStatus("INVALID_ARGUMENT", 400, "invalid_request_error", "invalid_argument"),
    ConfigError: ErrorStatus("INVALID_ARGUMENT", 400, "invalid_request_error", "invalid_argument"),
    Unauthenticated: ErrorStatus("UNAUTHENTICATED", 401, "authentication_error", "invalid_api_key"),
    Overloaded: ErrorStatus("RESOURCE_EXHAUSTED", 429, "rate_limit_error", "overloaded"),
    ModelNotReady: ErrorStatus("UNAVAILABLE", 503, "service_unavailable", "unavailable"),
    TimeoutError: ErrorStatus("DEADLINE_EXCEEDED", 504, "timeout", "deadline_exceeded"),
    BackendError: ErrorStatus("INTERNAL", 502, "backend_error", "bad_gateway"),
    CheckpointError: ErrorStatus("FAILED_PRECONDITION", 500, "internal_error", "checkpoint"),
}

_FROM_GRPC: dict[str, type[NextGPTError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "OUT_OF_RANGE": InvalidInput,
    "NOT_FOUND": ModelNotFound,
    "UNAUTHENTICATED": Unauthenticated,
    "RESOURCE_EXHAUSTED": Overloaded,
    "UNAVAILABLE": ModelNotReady,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def status_of(exc: BaseException) -> ErrorStatus:
    """The table's entry for `exc`; anything not in it is internal (its text is never shown)."""
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return INTERNAL


def client_message(exc: BaseException) -> str:
    """What the client is told: the domain message, or a pointer to the logs for internal errors."""
    if status_of(exc) is INTERNAL:
        return "internal error; see the server logs (the response's request id finds them)"
    return str(exc)


def from_grpc_code(code_name: str, message: str, retry_after_s: float | None = None) -> NextGPTError:
    """A status code received from another service -> the domain error to raise in its place."""
    kind = _FROM_GRPC.get(code_name)
    if kind is None:
        return BackendError(f"{code_name}: {message}", retry_after_s=retry_after_s)
    return kind(message, retry_after_s=retry_after_s)


def from_label(label: str, message: str, retry_after_s: float | None = None) -> NextGPTError:
    """An error received as its label (the OpenAI-style `code` of a REST error) -> the domain error, by
    the same table read backwards; an unknown label is a backend error."""
    status = next((s for s in STATUS.values() if s.label == label), None)
    return from_grpc_code(status.grpc_code if status else "UNKNOWN", message, retry_after_s)


def pushback_seconds(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """`retry_after_s` from a gRPC call's trailing metadata (pairs), None without a valid pushback."""
    value = dict(trailing_metadata or ()).get(RETRY_PUSHBACK_KEY)
    return int(value) / 1000 if isinstance(value, str) and value.isdigit() else None
