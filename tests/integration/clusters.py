"""The local cluster as the integration tests start it: real processes on free ports, logs kept with the
test's temporary files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.launcher import ClusterPorts, LocalCluster


@contextlib.contextmanager
def local_cluster(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory, **settings: Any
) -> Iterator[LocalCluster]:
    """`LocalCluster(**settings)` on free ports, running until the block ends."""
    log_dir = tmp_path_factory.mktemp("logs")
    with LocalCluster(
        models_dir=models_dir, cluster_ports=ClusterPorts.free(), log_dir=log_dir, **settings
    ) as c:
        yield c
