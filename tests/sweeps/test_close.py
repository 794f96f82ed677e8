"""The end of a sweep interrupted: a real SIGTERM while the report is written (a real SQLite
MLflow store; the signal is sent from inside ``write_report`` so it lands there)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

import sweeps.report
from sweeps import cli, runner
from sweeps.tracking import TAG_NOTE, TAG_OBJECTIVES, TAG_PARENT, TAG_SPEC, TAG_TRIAL, Sweep
from tests.sweeps.conftest import BASE_TRAIN


def test_sigterm_during_the_report_closes_the_parent_as_killed(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    objectives = json.dumps([{"metric": "val_acc", "mode": "max"}])
    parent = client.create_run(
        exp, tags={"flatsweep.role": "parent", "flatsweep.sweep": "t", TAG_OBJECTIVES: objectives}
    ).info.run_id
    child = client.create_run(
        exp,
        tags={TAG_PARENT: parent, TAG_TRIAL: "a", TAG_SPEC: json.dumps(BASE_TRAIN)},
    ).info.run_id
    client.log_metric(child, "val_acc", 0.9, step=3)
    client.set_terminated(child, "FINISHED")
    left_running = client.create_run(exp, tags={TAG_PARENT: parent, TAG_TRIAL: "b"}).info.run_id

    def interrupted(record, out):  # noqa: ANN001, ANN202
        os.kill(os.getpid(), signal.SIGTERM)  # what `ray job stop` sends, mid-report
        raise AssertionError("the handler should have raised")

    monkeypatch.setattr(sweeps.report, "write_report", interrupted)
    previous = signal.signal(signal.SIGTERM, cli._interrupt)  # as `sweeps run` installs it
    try:
        sweep = Sweep("t", exp, client.get_run(parent))
        result = runner.SweepResult("t", exp, parent, uri, 1, None)
        storage = SimpleNamespace(resolved_storage=lambda: str(tmp_path))
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            runner._close(client, sweep, storage, "FINISHED", result)  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGTERM, previous)

    run = client.get_run(parent)
    assert run.info.status == "KILLED"  # not left RUNNING, and not FINISHED without its end
    assert "sweeps resume t" in run.data.tags[TAG_NOTE]
    assert client.get_run(left_running).info.status == "KILLED"
    assert client.get_run(child).info.status == "FINISHED"
