"""`paced`: the LLM service's text deltas, joined to at most one message per interval, without holding
the first delta, a span or the end of the reply, and without leaving the engine running when closed.

Event order is driven by gates, not by clocks: an interval of an hour can only end by a span or the
result, and a source that waits for the consumer proves that held text goes out on its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import torch

from nextgpt.events import TextDelta
from nextgpt.types import LLMOutput, SignalSpan
from services.llm.engine import EngineEvent, paced

HOUR = 3600.0


def span() -> SignalSpan:
    return SignalSpan("image", 0, [1, 2, 3, 4], torch.zeros(4, 8), torch.zeros(4, 8))


def result() -> LLMOutput:
    return LLMOutput("abcd", "abcd", [1, 2, 3, 4], [], "stop", 3)


async def collect(events: AsyncIterator[EngineEvent]) -> list[EngineEvent]:
    return [event async for event in events]


def kinds(events: list[EngineEvent]) -> list[str]:
    return [e.text if isinstance(e, TextDelta) else type(e).__name__ for e in events]


def test_zero_interval_passes_every_event() -> None:
    async def source() -> AsyncIterator[EngineEvent]:
        for text in "abc":
            yield TextDelta(text)
        yield result()

    assert kinds(asyncio.run(collect(paced(source(), 0)))) == ["a", "b", "c", "LLMOutput"]


def test_text_is_joined_until_a_span_or_the_result() -> None:
    async def source() -> AsyncIterator[EngineEvent]:
        for text in "abc":
            yield TextDelta(text)
        yield span()
        yield TextDelta("d")
        yield TextDelta("e")
        yield result()

    out = asyncio.run(collect(paced(source(), HOUR)))
    assert kinds(out) == ["a", "bc", "SignalSpan", "de", "LLMOutput"]


def test_the_first_delta_is_not_held() -> None:
    async def main() -> None:
        received = asyncio.Event()

        async def source() -> AsyncIterator[EngineEvent]:
            yield TextDelta("a")
            await received.wait()  # blocks forever if "a" waits for more text
            yield result()

        events = paced(source(), HOUR)
        first = await asyncio.wait_for(anext(events), 10)
        assert kinds([first]) == ["a"]
        received.set()
        assert kinds(await collect(events)) == ["LLMOutput"]

    asyncio.run(main())


def test_held_text_goes_out_when_the_interval_ends() -> None:
    async def main() -> None:
        received = asyncio.Event()

        async def source() -> AsyncIterator[EngineEvent]:
            yield TextDelta("a")
            yield TextDelta("b")
            yield TextDelta("c")
            await received.wait()  # only the interval's end can release "bc"
            yield result()

        events = paced(source(), 0.01)
        got = [await asyncio.wait_for(anext(events), 10)]
        while "".join(kinds(got)) != "abc":
            got.append(await asyncio.wait_for(anext(events), 10))
        received.set()
        assert kinds(await collect(events)) == ["LLMOutput"]

    asyncio.run(main())


def test_closing_stops_the_source() -> None:
    async def main() -> None:
        closed = asyncio.Event()

        async def source() -> AsyncIterator[EngineEvent]:
            try:
                yield TextDelta("a")
                await asyncio.Event().wait()  # an engine still decoding
                yield result()
            finally:
                closed.set()

        events = paced(source(), HOUR)
        await anext(events)
        reader = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.01)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await events.aclose()
        assert closed.is_set()

    asyncio.run(main())


def test_an_error_of_the_source_ends_the_stream() -> None:
    async def source() -> AsyncIterator[EngineEvent]:
        yield TextDelta("a")
        yield TextDelta("b")
        raise RuntimeError("the model failed")

    async def main() -> list[str]:
        got: list[EngineEvent] = []
        try:
            async for event in paced(source(), HOUR):
                got.append(event)
        except RuntimeError as exc:
            return [*kinds(got), str(exc)]
        return kinds(got)

    assert asyncio.run(main()) == ["a", "the model failed"]
