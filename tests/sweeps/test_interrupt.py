"""A sweep stopped by a real signal ends KILLED with the way on; a driver killed during the
confirmation stage resumes it without re-running finished seeds. Real processes throughout."""

from __future__ import annotations

import json
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from sweeps import tracking
from tests.sweeps._procs import kill_group, start_driver, tune_snapshot, wait_for, write_spec

pytestmark = pytest.mark.cluster

SLOW_TRAIN = {
    "model": {"name": "cnn1d"},
    "data": {"name": "mnist1d", "num_train": 2000, "num_test": 300},
    "optim": {"lr": 0.1},
    "perturbation": {"kind": "amp"},
    "epochs": 12,
    "batch_size": 100,
    "device": "cpu",
}


def sqlite(tmp) -> str:  # noqa: ANN001
    return f"sqlite:///{tmp / 'mlflow.db'}"


def sweep_of(client: MlflowClient, name: str):  # noqa: ANN201
    return tracking.find_sweep(client, name)


def test_ctrl_c_ends_the_sweep_killed_with_exit_130_and_the_resume_hint(tmp_path):
    spec = write_spec(
        tmp_path,
        "sigint",
        sqlite(tmp_path),
        num_samples=4,
        # 60 epochs (about 4 s of a trial on a 2-core machine): with 12 a whole trial's epochs
        # could reach MLflow in the delivery that closed it, and a sweep ended once before
        # any trial was seen mid-way.
        train={**SLOW_TRAIN, "epochs": 60},
        scheduler={"name": "asha", "grace_period": 1},
    )
    proc = start_driver(["run", str(spec)], tmp_path)
    client = MlflowClient(sqlite(tmp_path))

    def mid_trial() -> bool:  # a trial has reported an epoch and has many left
        s = sweep_of(client, "sigint")
        if s is None:
            return False
        return any(
            r.info.status == "RUNNING" and r.data.metrics.get("train_loss") is not None
            for r in tracking.children(client, s)
        )

    try:
        wait_for(mid_trial, 300, "a trial mid-way")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the driver
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "driver.log").read_text()
    assert code == 130, log[-3000:]
    assert "sweeps resume sigint" in log and "Tuner.restore" not in log
    assert "best search trial" not in log  # no "best" claimed for an interrupted sweep
    s = sweep_of(client, "sigint")
    assert s.parent.info.status == "KILLED"
    runs = tracking.children(client, s)
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed, [r.info.status for r in runs]
    assert "RUNNING" not in {r.info.status for r in runs}
    for r in killed:  # interrupted is not "stopped early by the scheduler"
        assert r.data.tags.get("flatsweep.stopped_early") != "1"


def test_driver_killed_in_the_confirmation_stage_resumes_without_rerunning_seeds(
    tmp_path, ray_head
):
    train = {
        **SLOW_TRAIN,
        "epochs": 6,
        "data": {"name": "mnist1d", "num_train": 1500, "num_test": 300},
    }
    spec = write_spec(
        tmp_path,
        "confirmloss",
        sqlite(tmp_path),
        num_samples=2,
        train=train,
        scheduler={"name": "fifo"},
        checkpoint_every_s=0,
        # 12 confirmation trials of a second or less: enough for MLflow, whose writes land in
        # 1-s rounds, to show one finished while another runs (3 seeds could all end in one).
        finalists={"top_k": 1, "seeds": 6},
    )
    proc = start_driver(["run", str(spec)], tmp_path, env=ray_head)
    client = MlflowClient(sqlite(tmp_path))

    def confirmation_runs() -> list:
        s = sweep_of(client, "confirmloss")
        if s is None:
            return []
        return tracking.children(client, s, "finalist") + tracking.children(client, s, "baseline")

    def tune_finished() -> set[str]:
        """Trials that Tune's latest snapshot of any stage holds as finished: those a resume
        does not run again. (A trial that finished after it is run again, as Tune does.)"""
        done: set[str] = set()
        root = tmp_path / "ray"
        for exp_dir in root.iterdir() if root.is_dir() else ():
            snapshot = tune_snapshot(exp_dir) if exp_dir.is_dir() else None
            done |= {t for t, (status, _) in (snapshot or {}).items() if status == "TERMINATED"}
        return done

    def confirming() -> bool:
        """A confirmation run finished in MLflow and in Tune's snapshot, and one running."""
        runs = confirmation_runs()
        done = tune_finished()
        return any(
            r.info.status == "FINISHED" and r.data.tags[tracking.TAG_TRIAL] in done for r in runs
        ) and any(r.info.status == "RUNNING" for r in runs)

    wait_for(confirming, 480, "a confirmation trial finished in Tune's snapshot, another running")
    kill_group(proc)  # SIGKILL: no cleanup at all
    done = tune_finished()  # the snapshot the resume will restore
    done_before = {
        r.info.run_id: r.info.end_time
        for r in confirmation_runs()
        if r.info.status == "FINISHED" and r.data.tags[tracking.TAG_TRIAL] in done
    }
    assert done_before
    time.sleep(3)
    resume = start_driver(
        ["resume", "confirmloss", "--tracking-uri", sqlite(tmp_path)],
        tmp_path,
        env=ray_head,
        log_name="resume.log",
    )
    assert resume.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    s = sweep_of(client, "confirmloss")
    assert s.parent.info.status == "FINISHED"
    assert s.stages_done == ["search", "confirm"]
    after = [
        r for r in tracking.children(client, s) if tracking.stage_of(r) in ("finalist", "baseline")
    ]
    assert len(after) == 6 + 6  # one finalist and the baseline, 6 seeds each, no duplicates
    assert {r.info.status for r in after} == {"FINISHED"}
    ends = {r.info.run_id: r.info.end_time for r in after}
    for run_id, end in done_before.items():  # finished seeds were not re-run
        assert ends[run_id] == end
    assert len(tracking.children(client, s, "search")) == 2  # the search was not re-run
    assert s.parent.data.tags["flatsweep.verdict"] in ("better", "no_difference", "worse")
    plan = json.loads(s.parent.data.tags["flatsweep.finalists"])
    assert len(plan["finalists"]) == 1


class _SqliteServer:
    """``mlflow server --app-name flatsweep`` (bulk writes) on 127.0.0.1 over a SQLite file,
    restartable on the same port."""

    def __init__(self, tmp) -> None:  # noqa: ANN001
        from tests.sweeps._procs import free_port

        self.tmp, self.port = tmp, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        from tests.sweeps._procs import SERVER_ENV, wait_http

        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.tmp / 'server.db'}",
                "--artifacts-destination",
                str(self.tmp / "artifacts"),
                "--app-name",
                "flatsweep",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **SERVER_ENV},
        )
        wait_http(f"{self.uri}/health", 120)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, signal.SIGTERM)
            self.proc = None


def test_undelivered_records_end_the_sweep_failed_and_resume_delivers_them(tmp_path):
    server = _SqliteServer(tmp_path)
    server.start()
    try:
        # Trials long enough to be training when the server stops: a round that finds them
        # finished delivers every epoch and the close at once (bulk writes), and nothing is
        # left undelivered to test.
        epochs = 30
        train = {**SLOW_TRAIN, "epochs": epochs}
        # Two trials, one round on the two CPUs (a third one took another round for nothing).
        spec = write_spec(
            tmp_path, "lost", server.uri, num_samples=2, train=train, scheduler={"name": "fifo"}
        )
        proc = start_driver(["run", str(spec)], tmp_path, env={"FLATSWEEP_DRAIN_TIMEOUT_S": "5"})
        client = MlflowClient(server.uri)

        def first_epoch() -> bool:
            s = sweep_of(client, "lost")
            return s is not None and any(
                r.data.metrics.get("val_acc") is not None for r in tracking.children(client, s)
            )

        wait_for(first_epoch, 300, "a first epoch in MLflow")
        server.stop()  # and it stays down past the end of the sweep
        assert proc.poll() is None, "the sweep ended before the outage began"
        code = proc.wait(timeout=600)
        log = (tmp_path / "driver.log").read_text()
        assert code == 1, log[-3000:]
        assert "MLflow writes of the search stage were not delivered" in log
        assert "sweeps resume lost" in log
        assert "2 trials" not in log  # no success line

        server.start()
        resume = start_driver(
            ["resume", "lost", "--tracking-uri", server.uri], tmp_path, log_name="resume.log"
        )
        assert resume.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
        s = sweep_of(client, "lost")
        assert s.parent.info.status == "FINISHED"
        runs = tracking.children(client, s)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        for r in runs:  # every epoch, including those the first driver never delivered
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_acc"))
            assert steps == list(range(1, epochs + 1)), steps
            assert "test_acc" in r.data.metrics
    finally:
        server.stop()
