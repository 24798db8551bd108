"""Domain exceptions. One server interceptor maps them to gRPC codes, and the gateway maps those to HTTP.

Messages say what was wrong *and* how to fix it; they travel to the user unchanged.
"""


class NextGPTError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidInput(NextGPTError):
    """The request is malformed (bad media, bad option value). gRPC INVALID_ARGUMENT, HTTP 400."""


class ModelNotReady(NextGPTError):
    """A component is not loaded yet or its files are missing. gRPC UNAVAILABLE, HTTP 503."""


class CheckpointError(NextGPTError):
    """Weights on disk do not fit the configured model (wrong base, missing keys, shape mismatch)."""


class ConfigError(NextGPTError, ValueError):
    """A configuration value is out of bounds or names something that does not exist."""
