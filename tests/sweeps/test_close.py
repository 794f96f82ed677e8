"""The parent run's opening and end under faults, on a real SQLite MLflow store: a write
that fails once while the parent is opened, and a real SIGTERM while the report is written
(sent from inside ``write_report`` so that it lands there)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import sweeps.report
from sweeps import cli, runner, tracking
from sweeps.spec import SweepSpec
from sweeps.tracking import TAG_NOTE, TAG_OBJECTIVES, TAG_PARENT, TAG_SPEC, TAG_TRIAL, Sweep
from tests.sweeps.conftest import BASE_TRAIN, sweep_dict


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


def _flaky_log_text(monkeypatch, failures: int) -> None:  # noqa: ANN001
    """``log_text`` fails its first ``failures`` calls, as an artifact store's blip would."""
    real = MlflowClient.log_text
    left = {"n": failures}

    def log_text(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if left["n"]:
            left["n"] -= 1
            raise ConnectionError("artifact store briefly unreachable")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_text", log_text)


def _spec(tmp_path: Path) -> SweepSpec:
    d = sweep_dict("blip")
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return SweepSpec.model_validate(d)


def test_a_write_that_fails_once_while_opening_completes_the_same_parent(
    tmp_path: Path, monkeypatch
) -> None:
    # The retry used to find the parent its first try had made and refuse it as a duplicate
    # ("already exists", exit 2), leaving it RUNNING without sweep.yaml, which resume needs.
    spec = _spec(tmp_path)
    client = tracking.open_client(spec.resolved_tracking_uri())
    _flaky_log_text(monkeypatch, failures=1)

    sweep = runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)

    exp = client.get_experiment_by_name("blip")
    parents = client.search_runs([exp.experiment_id], "tags.`flatsweep.role` = 'parent'")
    assert [p.info.run_id for p in parents] == [sweep.parent_id]
    artifacts = {a.path for a in client.list_artifacts(sweep.parent_id)}
    assert {"sweep.yaml", "sweep_resolved.yaml", "search_space.json"} <= artifacts
    assert sweep.parent.data.params["num_samples"] == str(spec.num_samples)
    assert client.get_run(sweep.parent_id).data.tags[tracking.TAG_OPTUNA_STUDY] == "blip"
    # A second `sweeps run` of the name is still refused: the id is this run's alone.
    with pytest.raises(Exception, match="sweep 'blip' already exists"):
        runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)


def test_a_parent_whose_record_never_completes_is_closed_failed(
    tmp_path: Path, monkeypatch
) -> None:
    spec = _spec(tmp_path)
    client = tracking.open_client(spec.resolved_tracking_uri())
    _flaky_log_text(monkeypatch, failures=10**6)
    real_retrying = tracking.retrying
    monkeypatch.setattr(tracking, "retrying", lambda fn, **kw: real_retrying(fn, timeout_s=1.5))

    with pytest.raises(ConnectionError):
        runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)

    exp = client.get_experiment_by_name("blip")
    (parent,) = _parents(client, exp.experiment_id, ViewType.ALL)
    assert parent.info.status == "FAILED"  # not left RUNNING
    # and deleted: no trial ran, and its half-written record (no sweep.yaml to resume from)
    # would otherwise refuse the name to the next `sweeps run` and fail `sweeps resume`
    assert parent.info.lifecycle_stage == "deleted"
    assert _parents(client, exp.experiment_id) == []
    monkeypatch.undo()
    again = runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)
    assert again.parent_id != parent.info.run_id


def _parents(client: MlflowClient, exp: str, view: int = ViewType.ACTIVE_ONLY) -> list:
    return client.search_runs([exp], "tags.`flatsweep.role` = 'parent'", run_view_type=view)


def _sigterm_after_a_failed_write(monkeypatch, method: str) -> None:  # noqa: ANN001
    """``MlflowClient.<method>`` fails, and SIGTERM (what `ray job stop` sends) arrives while
    the retry waits its first backoff (1 s)."""

    def failing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        raise ConnectionError()  # no message: the retry's log names the type

    monkeypatch.setattr(MlflowClient, method, failing)


def test_an_interrupt_while_opening_removes_the_half_written_parent(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    spec = _spec(tmp_path)
    client = tracking.open_client(spec.resolved_tracking_uri())
    _sigterm_after_a_failed_write(monkeypatch, "log_text")
    previous = signal.signal(signal.SIGTERM, cli._interrupt)  # as `sweeps run` installs it
    try:
        with pytest.raises(runner.NotStarted) as e:
            runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert str(e.value) == (
        "interrupted while opening sweep 'blip': no trial ran, and this run removed the "
        "parent run it had begun; run it again"
    )
    assert "MLflow unreachable (ConnectionError); retrying in 1 s" in caplog.text
    exp = client.get_experiment_by_name("blip").experiment_id
    (parent,) = _parents(client, exp, ViewType.ALL)
    assert (parent.info.status, parent.info.lifecycle_stage) == ("KILLED", "deleted")
    monkeypatch.undo()
    sweep = runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)
    assert [p.info.run_id for p in _parents(client, exp)] == [sweep.parent_id]


def test_an_interrupt_while_reopening_to_resume_leaves_the_parent_killed_not_running(
    tmp_path: Path, monkeypatch
) -> None:
    spec = _spec(tmp_path)
    client = tracking.open_client(spec.resolved_tracking_uri())
    sweep = runner._open_parent(client, spec, "name: blip\n", resume=False, search=True)
    client.set_terminated(sweep.parent_id, "KILLED")  # an interrupted sweep, to be resumed
    _sigterm_after_a_failed_write(monkeypatch, "set_tag")  # after the reopen set RUNNING
    previous = signal.signal(signal.SIGTERM, cli._interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner._open_parent(client, spec, "name: blip\n", resume=True, search=True)
    finally:
        signal.signal(signal.SIGTERM, previous)

    parent = client.get_run(sweep.parent_id)
    assert (parent.info.status, parent.info.lifecycle_stage) == ("KILLED", "active")


def test_retries_never_swallow_an_interrupt() -> None:
    # tenacity catches BaseException: left to its default, Ctrl-C in a write was retried.
    calls = []

    def write() -> None:
        calls.append(1)
        raise KeyboardInterrupt("signal 15")

    with pytest.raises(KeyboardInterrupt):
        tracking.retrying(write, timeout_s=30)
    assert len(calls) == 1


def test_a_ctrl_c_while_tune_starts_is_an_interrupt_not_a_finished_stage(
    ray_local, tmp_path: Path, monkeypatch
) -> None:
    # Tune installs its SIGINT handler, then builds its controller (on a restore: seconds at
    # thousands of trials), and only then calls the callbacks' setup. A Ctrl-C in between
    # reached Tune's handler alone: fit() returned with nothing run, the stage was marked
    # done and the sweep FINISHED; a resume then skipped the stage for good.
    import yaml
    from ray.tune.execution.tune_controller import TuneController

    built = TuneController.__init__

    def built_then_ctrl_c(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        built(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C now

    monkeypatch.setattr(TuneController, "__init__", built_then_ctrl_c)
    d = sweep_dict("startup", num_samples=2)
    d |= {"storage_path": str(tmp_path / "ray"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}
    spec = SweepSpec.model_validate(d)
    outer = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(runner.Interrupted):
            runner.run_sweep(spec, yaml.safe_dump(d), progress=False)
        # and Tune's own handler is not left behind to swallow the next Ctrl-C
        assert signal.getsignal(signal.SIGINT) is outer
    finally:
        signal.signal(signal.SIGINT, outer)

    sweep = tracking.find_sweep(MlflowClient(spec.tracking_uri), "startup")
    assert sweep.parent.info.status == "KILLED"
    assert sweep.stages_done == []  # a resume runs the search
