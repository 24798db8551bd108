"""One fake cluster (fake backends + a real gateway) shared by the gateway tests; fault injection is
reset after every test. Tests that break the cluster build their own with `make_cluster`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.gateway.fakes import FakeCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[FakeCluster]:
    started = FakeCluster().start()
    yield started
    started.close()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").reset()


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., FakeCluster]]:
    made: list[FakeCluster] = []

    def make(**overrides) -> FakeCluster:
        made.append(FakeCluster(**overrides).start())
        return made[-1]

    yield make
    for c in made:
        c.close()
