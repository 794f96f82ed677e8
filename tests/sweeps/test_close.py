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


def test_after_a_stage_ctrl_c_raises_again_instead_of_reaching_tunes_stale_handler() -> None:
    """Tune's fit installs a SIGINT handler and leaves it behind when no signal came (it only
    logs "Stop signal received"): after the stage the handler from before fit is back, so the
    first Ctrl-C while the records drain or the report is written interrupts."""
    from sweeps.ray_internals import InterruptWatch

    outer = signal.getsignal(signal.SIGINT)  # pytest-xdist's workers may ignore SIGINT
    before = signal.default_int_handler  # a terminal's `sweeps run`: Ctrl-C raises
    signal.signal(signal.SIGINT, before)
    watch = InterruptWatch()  # the runner makes it before fit

    def tunes(signum, frame):  # noqa: ANN001, ANN202 - what Tune's fit installs
        pass

    signal.signal(signal.SIGINT, tunes)
    try:
        watch.setup()
        assert signal.getsignal(signal.SIGINT) not in (before, tunes)  # the watch's, wrapping
        watch.restore_handlers()
        assert signal.getsignal(signal.SIGINT) is before
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outer)
