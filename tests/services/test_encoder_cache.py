"""The embedding cache against a real redis-server: hits, TTL, keys, Redis dying and coming back."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import torch
from prometheus_client import REGISTRY

from services.encoder.cache import (
    LRUCache,
    RedisCache,
    cache_key,
    make_cache,
    pack,
    redact,
    sha256_hex,
    unpack,
)
from tests.services.redis_fixture import RedisProcess, redis_process, redis_server  # noqa: F401


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def vec(seed: int, n: int = 32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_pack_round_trip_is_exact() -> None:
    x = vec(0)
    assert torch.equal(unpack(pack(x)), x)
    assert unpack(pack(x.view(4, 8))).shape == (4, 8)
    with pytest.raises(ValueError, match="not shape"):
        unpack(pack(x)[:-4])


def test_key_names_model_preprocess_version_and_modality() -> None:
    sha = sha256_hex(b"abc")
    key = cache_key("imagebind-huge", "imagebind-ref-1", "text", sha)
    assert key == f"nextgpt:emb:imagebind-huge:imagebind-ref-1:text:{sha}"
    others = {
        cache_key("imagebind-tiny", "imagebind-ref-1", "text", sha),
        cache_key("imagebind-huge", "imagebind-ref-2", "text", sha),
        cache_key("imagebind-huge", "imagebind-ref-1", "image", sha),
    }
    assert key not in others and len(others) == 3


def test_lru_evicts_least_recently_used() -> None:
    async def main() -> None:
        lru = LRUCache(max_entries=2)
        await lru.set_many({"a": vec(1), "b": vec(2)})
        assert (await lru.get_many(["a"]))[0] is not None  # a is now the most recent
        await lru.set_many({"c": vec(3)})
        a, b, c = await lru.get_many(["a", "b", "c"])
        assert b is None and torch.equal(a, vec(1)) and torch.equal(c, vec(3))
        assert lru.state() == {
            "backend": "lru",
            "connected": False,
            "url": "",
            "entries": 2,
            "max_entries": 2,
        }

    asyncio.run(main())


def test_no_redis_url_means_lru_only() -> None:
    cache = make_cache("", ttl_s=10, max_entries=8)
    assert isinstance(cache, LRUCache) and cache.state()["backend"] == "lru"
    assert metric("nextgpt_encoder_cache_redis_up") == 0.0


def test_redact_hides_password() -> None:
    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_redis_hit_miss_and_ttl(redis_server: str) -> None:  # noqa: F811
    key = cache_key("m", "p", "image", sha256_hex(b"hit-miss"))
    hits, misses = (
        metric("nextgpt_encoder_cache_hits_total", backend="redis"),
        metric("nextgpt_encoder_cache_misses_total", backend="redis"),
    )

    async def main() -> None:
        cache = RedisCache(redis_server, ttl_s=100, max_entries=8)
        await cache.connect()
        assert cache.state()["connected"] and cache.state()["serving_from"] == "redis"
        assert await cache.get_many([key]) == [None]
        await cache.set_many({key: vec(5)})
        (found,) = await cache.get_many([key])
        assert found is not None and torch.equal(found, vec(5))
        await cache.close()

    asyncio.run(main())
    assert metric("nextgpt_encoder_cache_hits_total", backend="redis") == hits + 1
    assert metric("nextgpt_encoder_cache_misses_total", backend="redis") == misses + 1
    assert metric("nextgpt_encoder_cache_redis_up") == 1.0
    client = redis.Redis.from_url(redis_server)
    try:
        assert 0 < client.ttl(key) <= 100  # TTL set with the value
        assert torch.equal(unpack(client.get(key)), vec(5))  # raw float32 + shape, readable by others
    finally:
        client.close()


def test_redis_killed_falls_back_to_lru_then_reconnects(redis_process: RedisProcess) -> None:  # noqa: F811
    old, new = cache_key("m", "p", "audio", "old"), cache_key("m", "p", "audio", "new")
    errors = metric("nextgpt_encoder_cache_errors_total")

    async def main() -> None:
        cache = RedisCache(redis_process.url, max_entries=8, backoff_s=0.05, max_backoff_s=0.1)
        await cache.connect()
        await cache.set_many({old: vec(1)})

        # 1. Redis dies: the call falls back to the LRU (warm with `old`), errors are counted
        redis_process.stop()
        lru_hits = metric("nextgpt_encoder_cache_hits_total", backend="lru")
        (found,) = await cache.get_many([old])
        assert found is not None and torch.equal(found, vec(1))
        assert metric("nextgpt_encoder_cache_hits_total", backend="lru") == lru_hits + 1
        assert metric("nextgpt_encoder_cache_errors_total") == errors + 1
        assert metric("nextgpt_encoder_cache_redis_up") == 0.0
        state = cache.state()
        assert state["backend"] == "redis" and not state["connected"] and state["serving_from"] == "lru"
        assert "ConnectionError" in state["last_error"]
        # within the backoff Redis is not even tried: no new errors, stores go to the LRU
        await cache.set_many({new: vec(2)})
        assert metric("nextgpt_encoder_cache_errors_total") == errors + 1
        assert torch.equal((await cache.get_many([new]))[0], vec(2))

        # 2. Redis comes back (empty): the cache heals by itself, refilling Redis from the LRU
        redis_process.start()
        deadline = time.monotonic() + 10
        while not cache.state()["connected"]:
            assert time.monotonic() < deadline, "cache did not reconnect to the restarted Redis"
            await cache.get_many([new])
            await asyncio.sleep(0.02)
        assert metric("nextgpt_encoder_cache_redis_up") == 1.0
        await cache.close()

    asyncio.run(main())
    client = redis.Redis.from_url(redis_process.url)
    try:
        assert torch.equal(unpack(client.get(new)), vec(2))  # written back after the restart
    finally:
        client.close()


def test_redis_down_at_startup_is_not_fatal() -> None:
    async def main() -> None:
        with RedisProcess() as server:
            url = server.url
        cache = RedisCache(url, max_entries=8)  # nothing listens there any more
        await cache.connect()
        assert not cache.state()["connected"]
        await cache.set_many({"k": vec(3)})
        assert torch.equal((await cache.get_many(["k"]))[0], vec(3))
        await cache.close()

    asyncio.run(main())
