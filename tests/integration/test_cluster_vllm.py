"""The cluster's any-to-any tests with the LLM service on the vLLM engine (`--engine vllm`).

The tests are those of `test_cluster.py`; only the `cluster` fixture differs. Runs under `make test-vllm`.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tests.integration.clusters import local_cluster  # noqa: E402
from tests.integration.test_cluster import (  # noqa: E402, F401 - collected here with this module's cluster
    rest,
    test_any_to_any_over_grpc_unary_and_stream,
    test_any_to_any_over_rest,
    test_openai_sdk_plain_and_stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.vllm]


@pytest.fixture(scope="module")
def cluster(tiny_models_dir, tmp_path_factory):
    with local_cluster(
        tiny_models_dir,
        tmp_path_factory,
        engine="vllm",
        extra_env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    ) as running:
        llm_log = running.children["llm"].log_path
        yield running
    # Stopped: the LLM service closed both vLLM engines and exited without a shutdown error in its log
    # (AsyncLLM.__del__ used to shut down again at interpreter exit and raise a TypeError there).
    log = llm_log.read_text(errors="replace")
    assert "Exception ignored" not in log and "Traceback" not in log, log[-3000:]


def test_llm_service_runs_the_vllm_engine(cluster):
    log = cluster.children["llm"].log_path.read_text(errors="replace")
    assert "vLLM engine ready" in log
