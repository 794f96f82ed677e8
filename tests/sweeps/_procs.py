"""Real processes for reliability tests: sweep drivers, MLflow servers, S3 (moto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from sweeps import tracking
from tests._ports import free_port
from tests.sweeps.conftest import sweep_dict

BIN = Path(sys.executable).parent
# An `mlflow server` as infra/ starts one: MLflow 3's server jobs off. On a database store they
# are on by default and add eight processes, each importing MLflow, to every test server.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def write_spec(tmp: Path, name: str, tracking_uri: str, **over: Any) -> Path:
    d = sweep_dict(name, **over)
    d.setdefault("storage_path", str(tmp / "ray"))
    d["tracking_uri"] = tracking_uri
    # The tests poll a SQLite store with clients of their own, which would build its tables
    # at the moment the driver does (MLflow's table creation does not survive that race; the
    # driver's own guard, tracking.open_client, does not bind the test's client).
    tracking.open_client(tracking_uri)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def start_driver(
    args: list[str], tmp: Path, env: dict[str, str] | None = None, log_name: str = "driver.log"
) -> subprocess.Popen:
    """``python -m sweeps ARGS`` in its own process group, output to a log file.

    These tests watch running trials' epochs arrive in MLflow, so a driver writes them each
    second (``FLATSWEEP_MLFLOW_METRICS_EVERY_S``; 5 s by default) unless ``env`` says
    otherwise."""
    log = open(tmp / log_name, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "sweeps", *args, "--quiet"],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "FLATSWEEP_MLFLOW_METRICS_EVERY_S": "1", **(env or {})},
    )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(pred: Any, timeout_s: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def tune_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial of a Tune experiment reported, by Tune's trial id.

    Read from the ``result.json`` that Tune's ``JsonLoggerCallback`` (which the runner keeps)
    writes per trial on the driver and syncs to ``<storage>/<experiment>/<trial>/`` with each
    experiment snapshot. Each result carries Tune's auto-filled ``trial_id``, ``pid`` (the
    process running the trial) and ``training_iteration``.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for path in exp_dir.glob("*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the line being written
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def tune_snapshot(exp_dir: Path) -> dict[str, tuple[str, bool]] | None:
    """What a resumed Tune would restore: each trial's status in the experiment's latest
    snapshot (``experiment_state-*.json``), and whether the snapshot names a checkpoint of it.
    None while no snapshot is complete on disk. Ray 2.60 stores the checkpoint manager as a hex
    cloudpickle (its fallback for what JSON cannot hold); ``_latest_checkpoint_result`` is the
    private field that ``sweeps/ray_internals.py`` repairs."""
    import pickle

    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (json.JSONDecodeError, KeyError):
        return None  # being written
    out = {}
    for trial_json, metadata_json in trial_data:
        trial = json.loads(trial_json)
        manager = json.loads(metadata_json)["checkpoint_manager"]
        # Tune's own pickle, written by this test's own driver moments ago.
        latest = pickle.loads(bytes.fromhex(manager["value"]))._latest_checkpoint_result  # noqa: S301
        out[trial["trial_id"]] = (trial["status"], latest is not None)
    return out


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is ``ancestor`` or one of its descendants (Linux /proc)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the command is ppid
    return False


def children(client: MlflowClient, name: str) -> list:
    from sweeps.tracking import find_children, find_parent

    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    parent = find_parent(client, exp.experiment_id, name)
    return find_children(client, exp.experiment_id, parent.info.run_id) if parent else []


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a fresh PostgreSQL database and S3 (moto) artifacts,
    with flatsweep's app (bulk writes) as ``infra/local/up.sh`` starts it."""

    def __init__(self, tmp: Path, s3_endpoint: str) -> None:
        import psycopg2

        self.db = f"flatsweep_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {self.db}")
        conn.close()
        self.tmp, self.port = tmp, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **SERVER_ENV,
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.tmp / "mlflow-server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db}",
                "--artifacts-destination",
                "s3://flatsweep-test/mlartifacts",
                "--workers",
                "1",
                "--app-name",
                "flatsweep",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        wait_http(f"{self.uri}/health", 120)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, signal.SIGTERM)
            self.proc = None

    def drop(self) -> None:
        import psycopg2

        self.stop()
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
        conn.close()
