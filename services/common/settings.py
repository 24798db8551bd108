"""Service settings: one dataclass per service, filled from flags, then env vars, then defaults.

`--max-wait-ms 5` beats `NEXTGPT_ENCODER_MAX_WAIT_MS=5` beats the field default. Field docstrings
(the string literal under each field) become the flags' help text.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import textwrap
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from nextgpt.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings under dataclass fields (as in vLLM's config classes)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    body = node.body
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _parse(kind: Any, raw: str, name: str) -> Any:
    origin = typing.get_origin(kind)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if origin is not None and args and origin is not list:  # X | None
        if raw.lower() in ("", "none", "null"):
            return None
        kind = args[0]
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str):
            return kind(raw)
        if typing.get_origin(kind) is list:
            return [s.strip() for s in raw.split(",") if s.strip()]
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def load_settings(
    cls: type[S], env_prefix: str, argv: Sequence[str] | None = None, env: dict | None = None
) -> S:
    """Build `cls` from command-line flags and `{env_prefix}{FIELD}` environment variables."""
    env = dict(os.environ) if env is None else env
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    parser = argparse.ArgumentParser(description=(cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        env_name = f"{env_prefix}{f.name.upper()}"
        default: object = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            help=f"{docs.get(f.name, '')} [env {env_name}; default {default!r}]",
        )
    flags = vars(parser.parse_args(list(argv) if argv is not None else []))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = f"{env_prefix}{f.name.upper()}"
        if flags.get(f.name) is not None:
            values[f.name] = _parse(hints[f.name], flags[f.name], f"--{f.name.replace('_', '-')}")
        elif env_name in env:
            values[f.name] = _parse(hints[f.name], env[env_name], env_name)
    return cls(**values)
