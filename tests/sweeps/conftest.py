"""A small base sweep spec for tests (the session's local Ray is in tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests._ports import free_ports

BASE_TRAIN: dict[str, Any] = {
    "model": {"name": "cnn1d"},
    "data": {"name": "mnist1d", "num_train": 600, "num_test": 300},
    "optim": {"lr": 0.1},
    "perturbation": {"kind": "amp"},
    "epochs": 3,
    "batch_size": 100,
    "device": "cpu",
}


def sweep_dict(name: str = "t", **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "train": yaml.safe_load(yaml.safe_dump(BASE_TRAIN)),
        "space": {"name": "amp", "ranges": {"perturbation.radius": [0.005, 0.05]}},
        "searcher": {"sampler": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 4,
        "resources": {"cpu": 1},
        # The confirmation stage has its own tests (test_confirm.py); elsewhere it would only
        # add minutes.
        "finalists": {"top_k": 0},
    }
    d.update(over)
    return d


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, MlflowClient, str, str]:
    """A SQLite MLflow store: (tracking URI, client, experiment id, a parent run's id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"flatsweep.role": "parent"}).info.run_id
    return uri, client, exp, parent


@pytest.fixture
def ray_head(tmp_path):
    """Our own ``ray start --head --block`` with token auth on (our own token).

    It runs in its own process group and is stopped by signalling that group: never
    ``ray stop``, which stops every Ray on the machine, including ones we did not start.
    """
    bin_dir = Path(sys.executable).parent
    port, dash = free_ports(2)
    token = tmp_path / "ray_token"
    token.write_text(os.urandom(32).hex())
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    temp = Path("/tmp") / f"rh{port}"  # Ray's socket paths must stay short
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--temp-dir={temp}",
    ]
    log = open(tmp_path / "ray_head.log", "ab")  # noqa: SIM115 - closed below
    # The teardown signals the whole group, so the GCS stops with the head; Ray 2.60's
    # SIGTERM drain (a GCS call, up to 30 s) could then only run out its time, as it did in
    # two of these tests' teardowns (30 s each).
    no_drain = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **auth, **no_drain},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the GCS port answers once the head is up
        if head.poll() is not None:
            raise RuntimeError((tmp_path / "ray_head.log").read_text()[-2000:])
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    time.sleep(2)  # the raylet registers with the GCS just after it listens
    try:
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}", **auth}
    finally:
        # `ray start --block` stops the processes it started when it is terminated.
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
