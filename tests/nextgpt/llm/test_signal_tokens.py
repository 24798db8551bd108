"""find_spans on hand-built id sequences (legacy ids of the tiny vocab: 1000..1037)."""

from __future__ import annotations

import pytest

from nextgpt.llm.signal_tokens import LEGACY, SignalTokenIds, find_spans


@pytest.fixture
def ids() -> SignalTokenIds:
    return SignalTokenIds(
        layout=LEGACY,
        spans={
            "image": tuple(range(1002, 1006)),
            "video": tuple(range(1006, 1030)),
            "audio": tuple(range(1030, 1038)),
        },
        wrapper=(1000, 1001),
    )


def IMG(ids: SignalTokenIds) -> list[int]:  # noqa: N802
    return list(ids.spans["image"])


def test_one_span(ids: SignalTokenIds) -> None:
    assert find_spans([5, 6, *IMG(ids), 7], ids) == ([("image", 2)], [])


def test_several_spans(ids: SignalTokenIds) -> None:
    seq = [5, *IMG(ids), 9, 9, *IMG(ids), 3]
    assert find_spans(seq, ids) == ([("image", 1), ("image", 7)], [])


def test_partial_span_warns(ids: SignalTokenIds) -> None:
    spans, warnings = find_spans([5, 1002, 1003, 7], ids)
    assert spans == [] and len(warnings) == 1
    assert "partial image span at token 1" in warnings[0] and "2 signal token(s)" in warnings[0]


def test_out_of_order_and_cut_off(ids: SignalTokenIds) -> None:
    spans, warnings = find_spans([1003, 1002, 1004, 1005, 8, 1030, 1031], ids)
    assert spans == []
    assert len(warnings) == 2 and "audio" in warnings[1]


def test_partial_then_complete(ids: SignalTokenIds) -> None:
    spans, warnings = find_spans([1002, 1003, *IMG(ids)], ids)
    assert spans == [("image", 2)] and len(warnings) == 1


def test_three_modalities(ids: SignalTokenIds) -> None:
    seq = [4, *ids.spans["audio"], 1000, *IMG(ids), 1001, 7, *ids.spans["video"], 8]
    assert find_spans(seq, ids) == ([("audio", 1), ("image", 10), ("video", 16)], [])


def test_span_at_the_very_end(ids: SignalTokenIds) -> None:
    assert find_spans([4, 5, *ids.spans["video"]], ids) == ([("video", 2)], [])
    assert find_spans(list(ids.spans["audio"]), ids) == ([("audio", 0)], [])


def test_position(ids: SignalTokenIds) -> None:
    assert ids.position(1002) == ("image", 0)
    assert ids.position(1029) == ("video", 23)
    assert ids.position(1000) is None and ids.position(5) is None
