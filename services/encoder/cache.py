"""Embedding cache: Redis shared by every encoder replica, an in-process LRU as fallback.

Keys are (encoder model id, preprocessing version, modality, sha256 of the bytes): new weights or new
preprocessing never serve stale vectors, and a text never collides with a file of the same bytes.
Values are the raw little-endian float32 bytes plus the shape.

Redis's size is bounded by Redis itself: the service expects it to run with `maxmemory` and
`maxmemory-policy allkeys-lru` (the local launcher starts it that way); the TTL bounds growth too.
A Redis failure never fails a request: the call falls back to the LRU, and Redis is retried after a
short backoff, so a restarted Redis heals without restarting the service.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
import torch
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CACHE_HITS = Counter("nextgpt_encoder_cache_hits_total", "Embedding cache hits, by backend", ["backend"])
CACHE_MISSES = Counter(
    "nextgpt_encoder_cache_misses_total", "Embedding cache misses, by backend", ["backend"]
)
CACHE_ERRORS = Counter("nextgpt_encoder_cache_errors_total", "Redis errors (the call fell back to the LRU)")
REDIS_UP = Gauge("nextgpt_encoder_cache_redis_up", "1 while the last Redis call succeeded, else 0")
LRU_ENTRIES = Gauge("nextgpt_encoder_cache_lru_entries", "Entries held by the in-process LRU cache")

KEY_PREFIX = "nextgpt:emb"
_REDIS_FAILURES = (RedisError, OSError)  # OSError covers refused connections and timeouts


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(model_id: str, preprocess_version: str, modality: str, sha256: str) -> str:
    """`nextgpt:emb:<model id>:<preprocess version>:<modality>:<sha256>`; modality "text" marks texts."""
    return f"{KEY_PREFIX}:{model_id}:{preprocess_version}:{modality}:{sha256}"


def pack(embedding: torch.Tensor) -> bytes:
    """float32 tensor -> ndim (u32) + shape (u32 each) + raw little-endian float32 bytes."""
    array = embedding.detach().cpu().contiguous().float().numpy().astype("<f4", copy=False)
    return struct.pack(f"<I{array.ndim}I", array.ndim, *array.shape) + array.tobytes()


def unpack(value: bytes) -> torch.Tensor:
    (ndim,) = struct.unpack_from("<I", value)
    shape = struct.unpack_from(f"<{ndim}I", value, 4)
    array = np.frombuffer(value, dtype="<f4", offset=4 + 4 * ndim).astype(np.float32)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"cached value holds {array.size} floats, not shape {list(shape)}")
    return torch.from_numpy(array.reshape(shape))


class EmbeddingCache(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]: ...

    async def set_many(self, items: dict[str, torch.Tensor]) -> None: ...

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


class LRUCache:
    """In-process cache of at most `max_entries` embeddings, least recently used evicted first."""

    backend = "lru"

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        """Look up without touching metrics (RedisCache counts its fallback hits itself)."""
        found: list[torch.Tensor | None] = []
        for key in keys:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            found.append(unpack(value) if value is not None else None)
        return found

    def store(self, items: dict[str, torch.Tensor]) -> None:
        for key, embedding in items.items():
            self._items[key] = pack(embedding)
            self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        LRU_ENTRIES.set(len(self._items))

    async def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        found = self.lookup(keys)
        _count(self.backend, found)
        return found

    async def set_many(self, items: dict[str, torch.Tensor]) -> None:
        self.store(items)

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {
            "backend": "lru",
            "connected": False,
            "url": "",
            "entries": len(self._items),
            "max_entries": self.max_entries,
        }


class RedisCache:
    """Redis first; on any Redis error, the LRU for that call, and Redis again after a backoff.

    Every stored embedding also goes into the LRU (a warm standby), so a Redis outage loses few hits;
    Redis misses are looked up in the LRU too and written back (a restarted, empty Redis refills)."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int = 7 * 24 * 3600,
        max_entries: int = 4096,
        timeout_s: float = 0.5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.lru = LRUCache(max_entries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # No client-side retries: a failed call falls back at once and the backoff below paces retries.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=None
        )
        self.connected = False
        self.degraded = False
        self._retry_at = 0.0
        self._delay = backoff_s
        self._last_error = ""

    async def connect(self) -> None:
        """Ping once at startup; a missing Redis is logged and retried later, never fatal."""
        try:
            await self._client.ping()
        except _REDIS_FAILURES as exc:
            self._failed(exc)
        else:
            self._succeeded()

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass

    def _available(self) -> bool:
        return not self.degraded or time.monotonic() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        CACHE_ERRORS.inc()
        REDIS_UP.set(0)
        self.connected = False
        self._last_error = f"{type(exc).__name__}: {exc}"
        if not self.degraded:
            logger.warning(
                "Redis at %s failed (%s); using the in-process LRU cache until it answers again",
                redact(self.url),
                self._last_error,
            )
            self._delay = self.backoff_s
        else:
            self._delay = min(self._delay * 2, self.max_backoff_s)
        self.degraded = True
        self._retry_at = time.monotonic() + self._delay

    def _succeeded(self) -> None:
        if self.degraded:
            logger.info("Redis at %s answers again; embedding cache back on Redis", redact(self.url))
        self.degraded = False
        self.connected = True
        self._last_error = ""
        REDIS_UP.set(1)

    async def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        if not keys:
            return []
        if self._available():
            try:
                values = await self._client.mget(list(keys))
            except _REDIS_FAILURES as exc:
                self._failed(exc)
            else:
                self._succeeded()
                found = [_unpack_or_none(key, v) for key, v in zip(keys, values, strict=True)]
                _count(self.backend, found)
                return await self._fill_from_lru(keys, found)
        return await self.lru.get_many(keys)

    async def _fill_from_lru(
        self, keys: Sequence[str], found: list[torch.Tensor | None]
    ) -> list[torch.Tensor | None]:
        """Redis misses the LRU still holds (e.g. Redis restarted empty) are served and written back."""
        missing = [i for i, v in enumerate(found) if v is None]
        if not missing:
            return found
        local = await self.lru.get_many([keys[i] for i in missing])
        back = {keys[i]: v for i, v in zip(missing, local, strict=True) if v is not None}
        for i, v in zip(missing, local, strict=True):
            found[i] = v
        if back:
            await self._redis_set(back)
        return found

    async def set_many(self, items: dict[str, torch.Tensor]) -> None:
        if not items:
            return
        self.lru.store(items)
        if self._available():
            await self._redis_set(items)

    async def _redis_set(self, items: dict[str, torch.Tensor]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, embedding in items.items():
                    pipe.set(key, pack(embedding), ex=self.ttl_s)
                await pipe.execute()
        except _REDIS_FAILURES as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def state(self) -> dict[str, Any]:
        return {
            "backend": "redis",
            "connected": self.connected,
            "url": redact(self.url),
            "serving_from": "lru" if self.degraded else "redis",
            "last_error": self._last_error,
            "ttl_s": self.ttl_s,
            "entries": len(self.lru),
            "max_entries": self.lru.max_entries,
        }


def make_cache(redis_url: str, *, ttl_s: int, max_entries: int) -> RedisCache | LRUCache:
    """Redis when a URL is given, else the in-process LRU alone."""
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s, max_entries=max_entries)
    REDIS_UP.set(0)
    return LRUCache(max_entries)


def redact(url: str) -> str:
    """The URL without its password, for logs and readiness details."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _unpack_or_none(key: str, value: bytes | str | None) -> torch.Tensor | None:
    if not isinstance(value, bytes):  # None (a miss); str only with decode_responses, never set here
        return None
    try:
        return unpack(value)
    except (ValueError, struct.error) as exc:  # a foreign or truncated value: recompute it
        logger.warning("ignoring malformed cache value at %s: %s", key, exc)
        return None


def _count(backend: str, found: list[torch.Tensor | None]) -> None:
    hits = sum(v is not None for v in found)
    if hits:
        CACHE_HITS.labels(backend).inc(hits)
    if len(found) - hits:
        CACHE_MISSES.labels(backend).inc(len(found) - hits)
