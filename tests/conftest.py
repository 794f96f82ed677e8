"""Shared test setup: GPU tests skip cleanly on machines without CUDA."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
import torch

# One dataset cache per test session (workers Ray starts inherit it), never the user's own:
# generated data is still generated once per session, and tests of the cache set their own.
os.environ["FLATSWEEP_CACHE_DIR"] = tempfile.mkdtemp(prefix="flatsweep-test-cache-")

# Under pytest-xdist (the Makefile runs 2 workers) each worker's in-process PyTorch gets its
# share of the cores: with every worker on all of them, the in-process training tests ran up
# to 9x slower on 2 cores. Processes the tests start set their own threads.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


#: ``ray.init`` arguments of the session's Ray. ``address="local"`` always starts a new Ray:
#: without it ``ray.init`` joins whatever ``RAY_ADDRESS`` or ``$RAY_TMPDIR/ray/ray_current_cluster``
#: (left by any ``ray start`` or ``cluster_utils.Cluster``, even a dead one) names, and then
#: refuses ``num_cpus``. No test joins or stops a Ray it did not start.
RAY_INIT: dict[str, Any] = {
    "address": "local",
    "num_cpus": 2,
    "include_dashboard": False,
    "log_to_driver": False,
    "configure_logging": False,
}


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the session's sweep tests."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(**RAY_INIT)
    yield ray
    ray.shutdown()  # only the Ray started above
