"""MLflowTracker against a real SQLite tracking store, driven through Tune's callback hooks.

The hooks are called directly with a minimal trial object (Tune passes its ``Trial``; the
tracker reads only ``trial_id`` and ``config``), so the writer's batching, ordering and replay
rules are checked without a sweep around them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from sweeps.tracking import TAG_PARENT, TAG_STOPPED_EARLY, MLflowTracker, _Outbox
from tests.sweeps._procs import wait_for
from tests.sweeps.conftest import BASE_TRAIN


@dataclass
class _Trial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"perturbation.radius": 0.01})
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)


def _report(tracker: MLflowTracker, trial: _Trial, result: dict[str, Any]) -> None:
    """What Tune does with a result: the callback's hook, then the trial's last_result."""
    tracker.on_trial_result(0, [], trial, result)
    trial.last_result = result


def _train(tracker: MLflowTracker, trial: _Trial, epochs: int) -> None:
    """A trial as Tune runs it: its start, a result per epoch, its end (TERMINATED)."""
    tracker.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        _report(tracker, trial, _result(epoch))
    trial.status = "TERMINATED"
    tracker.on_trial_complete(0, [], trial)


def _result(epoch: int, **extra: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "val_acc": 0.5 + epoch / 1000,
        "val_loss": 1.0 / epoch,
        "train_loss": 2.0 / epoch,
        "training_iteration": epoch,
        **extra,
    }


class _Counting(MlflowClient):
    """A real client that counts the metric batches it sends."""

    batches: list[int]

    def log_batch(self, run_id: str, metrics: Any = (), **kw: Any) -> Any:  # type: ignore[override]
        if metrics:
            self.batches.append(len(metrics))
        return super().log_batch(run_id, metrics=metrics, **kw)


def _tracker(store: tuple[str, MlflowClient, str, str], interval_s: float) -> MLflowTracker:
    """A tracker writing through MLflow's API (``bulk=False``), whose calls the tests count;
    ``test_sqlbulk`` checks that bulk writes record the same."""
    uri, _, exp, parent = store
    tracker = MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=200, bulk=False)
    tracker._outbox.interval_s = interval_s
    client = _Counting(uri)
    client.batches = []
    tracker._client = client
    return tracker


def _child(client: MlflowClient, exp: str, parent: str) -> Any:
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    assert len(runs) == 1
    return runs[0]


def test_epochs_reported_close_together_land_in_few_batches(store):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.5)
    _train(tracker, _Trial("a"), 150)
    assert tracker.drain()

    run = _child(client, exp, parent)
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, 151))
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_STOPPED_EARLY] == "1"  # 150 of max_epochs 200
    batches = tracker._client.batches  # type: ignore[union-attr]
    # 150 epochs x 3 metrics: far fewer calls than epochs, none above MLflow's 1000 limit.
    assert sum(batches) == 450
    assert len(batches) < 20
    assert max(batches) <= 1000


def test_a_running_trials_epochs_wait_for_metrics_every_s_but_its_start_and_end_do_not(store):
    """With a 30-s metrics period the run is created and closed within seconds, while its
    epochs wait: until the run closes, which takes them along."""
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    tracker._outbox.metrics_every_s = 30.0
    trial = _Trial("m")
    tracker.on_trial_start(0, [], trial)
    # The parent and this run, well within the 30-s period.
    wait_for(lambda: len(client.search_runs([exp])) == 2, 10, "the run created", 0.05)
    for epoch in range(1, 6):
        _report(tracker, trial, _result(epoch))
    time.sleep(1.0)
    run_id = _child(client, exp, parent).info.run_id
    assert client.get_metric_history(run_id, "val_acc") == []  # not due yet
    trial.status = "TERMINATED"
    tracker.on_trial_complete(0, [], trial)
    wait_for(lambda: client.get_run(run_id).info.status == "FINISHED", 10, "the run closed", 0.05)
    history = client.get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert tracker._client.batches == [15]  # type: ignore[union-attr]  # 5 epochs x 3, one call


def test_a_running_trials_epochs_land_once_per_metrics_every_s(store):
    """Twenty epochs 0.1 s apart with a 0.5-s period: a few calls, not one per epoch, and
    the first epochs land while the trial still runs."""
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    tracker._outbox.metrics_every_s = 0.5
    trial = _Trial("p")
    tracker.on_trial_start(0, [], trial)
    for epoch in range(1, 21):
        _report(tracker, trial, _result(epoch))
        time.sleep(0.1)
    run_id = _child(client, exp, parent).info.run_id
    assert client.get_metric_history(run_id, "val_acc")  # landed on the way
    trial.status = "TERMINATED"
    tracker.on_trial_complete(0, [], trial)
    assert tracker.drain()
    history = client.get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, 21))
    batches = tracker._client.batches  # type: ignore[union-attr]
    assert sum(batches) == 60
    assert 2 <= len(batches) <= 8  # about one per 0.5 s of the 2 s; not 20


def test_the_metrics_period_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("FLATSWEEP_MLFLOW_METRICS_EVERY_S", raising=False)
    assert _Outbox(lambda w, b: None).metrics_every_s == 5.0
    monkeypatch.setenv("FLATSWEEP_MLFLOW_METRICS_EVERY_S", "0.5")
    assert _Outbox(lambda w, b: None).metrics_every_s == 0.5
    assert _Outbox(lambda w, b: None, metrics_every_s=2.0).metrics_every_s == 2.0


def test_a_restart_after_finish_keeps_status_order_and_every_epoch(store):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.2)
    trial = _Trial("b")
    tracker.on_trial_start(0, [], trial)
    _report(tracker, trial, _result(1))
    tracker.on_trial_complete(0, [], trial)  # FINISHED, then a late result of a restart:
    tracker.on_trial_restore(0, [], trial)
    _report(tracker, trial, _result(2))
    assert tracker.drain()
    run = _child(client, exp, parent)
    assert run.info.status == "RUNNING"  # the restore's status came after FINISHED
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]


def test_replayed_epochs_are_skipped_but_a_final_diverged_report_lands(store):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    trial = _Trial("c")
    tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        _report(tracker, trial, _result(epoch))
    assert tracker.drain()
    # Restored from the epoch-1 checkpoint: epochs 2 and 3 come again, then epoch 4 diverges
    # and the trial reports epoch 4 twice (the last time with the worst value).
    for epoch in (2, 3, 4):
        _report(tracker, trial, _result(epoch))
    _report(tracker, trial, {**_result(4, diverged=1.0), "val_acc": 0.0})
    assert tracker.drain()
    run = _child(client, exp, parent)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 4]
    assert min(m.value for m in client.get_metric_history(run.info.run_id, "val_acc")) == 0.0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "diverged")] == [4]


def test_the_end_of_a_stage_waits_for_its_writes_once(store):
    """Tune's on_experiment_end drains, then the runner does: one deadline for both, so a
    stage whose writes cannot land fails after drain_timeout_s, not twice that."""
    tracker = _tracker(store, interval_s=0.0)
    tracker.drain_timeout_s = 2.0

    def down(*a: Any, **kw: Any) -> Any:  # the store down for good (see the test below)
        raise ConnectionError("tracking server unreachable")

    tracker._client.log_batch = down  # type: ignore[union-attr, method-assign]
    _train(tracker, _Trial("e"), 3)
    start = time.monotonic()
    tracker.on_experiment_end([])
    first = time.monotonic() - start
    assert not tracker.drain()  # what the runner asks next
    total = time.monotonic() - start
    assert first >= 2.0  # the first drain waited its whole deadline
    assert total < 3.0, total  # and the second did not wait another
    assert tracker.outstanding > 0
    tracker.close()


def test_closed_writers_write_nothing_more_when_the_store_comes_back(store):
    """After a drain that timed out, the runner closes the tracker and then records the
    sweep's end (the parent, runs left open as KILLED from one read of the children). A
    writer that caught up meanwhile would write under that record: a run left RUNNING under
    a closed parent, a finished one overwritten KILLED. Closed, none writes again; what is
    queued is Tune's results' to replay on resume."""
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    tracker.drain_timeout_s = 1.0
    up = {"now": False}
    calls = []
    real_log_batch = tracker._client.log_batch  # type: ignore[union-attr]

    def log_batch(*a: Any, **kw: Any) -> Any:
        calls.append(up["now"])
        if not up["now"]:
            raise ConnectionError("tracking server unreachable")
        return real_log_batch(*a, **kw)

    tracker._client.log_batch = log_batch  # type: ignore[union-attr, method-assign]
    for i in range(3):
        _train(tracker, _Trial(f"c{i}"), 2)
    assert not tracker.drain()
    queued = tracker.outstanding
    start = time.monotonic()
    tracker.close()  # the writer was waiting to retry: it stops at once
    assert time.monotonic() - start < 2.0
    up["now"] = True  # the store is back
    time.sleep(1.5)  # longer than a writer's round and its first backoffs
    assert True not in calls  # nothing was written after close
    assert tracker.outstanding == queued
    assert all(not t.is_alive() for t in tracker._outbox._threads if t is not None)


def test_writes_are_retried_until_the_store_is_back(store, tmp_path):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    real_log_batch = tracker._client.log_batch  # type: ignore[union-attr]
    down_until = time.monotonic() + 2.0

    # The store "down" for 2 s: the one fault here that a single process cannot make real.
    def flaky(*a: Any, **kw: Any) -> Any:
        if time.monotonic() < down_until:
            raise ConnectionError("tracking server unreachable")
        return real_log_batch(*a, **kw)

    tracker._client.log_batch = flaky  # type: ignore[union-attr, method-assign]
    trial = _Trial("d")
    tracker.on_trial_start(0, [], trial)
    for epoch in range(1, 11):
        _report(tracker, trial, _result(epoch))
    tracker.on_trial_complete(0, [], trial)
    assert tracker.drain()
    run = _child(client, exp, parent)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == list(
        range(1, 11)
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["perturbation.radius"] == "0.01"  # the params write was retried too


def test_a_create_run_whose_answer_was_lost_creates_no_second_run(store):
    """Through MLflow's API (no bulk writes): the server committed the run, its answer was
    lost (a timeout), and the retry must find that run rather than create another."""
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=0.0)
    tracker.fresh = True  # a stage this driver started: its trials are not looked up first
    real_create = tracker._client.create_run  # type: ignore[union-attr]
    lost = {"n": 1}

    def create_then_lose_the_answer(*a: Any, **kw: Any) -> Any:
        run = real_create(*a, **kw)
        if lost["n"]:
            lost["n"] -= 1
            raise ConnectionError("read timed out")  # the fault a process cannot make real
        return run

    tracker._client.create_run = create_then_lose_the_answer  # type: ignore[union-attr, method-assign]
    _train(tracker, _Trial("c"), 3)
    assert tracker.drain()
    assert lost["n"] == 0
    run = _child(client, exp, parent)  # exactly one child
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_one_round_delivers_every_trial_queued(store):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=2.0)
    trials = [_Trial(f"t{i}") for i in range(10)]
    for trial in trials:  # all queued well inside the writer's first 2 s wait
        tracker.on_trial_start(0, [], trial)
    for epoch in range(1, 6):
        for trial in trials:
            _report(tracker, trial, _result(epoch))
    deadline = time.monotonic() + 60
    while (tracker._outbox.pending or not tracker._outbox.rounds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tracker._outbox.pending
    assert tracker._outbox.rounds == 1  # not one run per round: the queue cannot fall behind
    assert tracker._client.batches == [15] * 10  # type: ignore[union-attr]  # 5 epochs x 3
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    assert len(runs) == 10


def test_a_restarted_driver_closes_runs_whose_last_writes_died_with_the_old_one(store):
    uri, client, exp, parent = store
    old = _tracker(store, interval_s=0.0)
    done, failed, landed = _Trial("done"), _Trial("failed"), _Trial("landed")
    for trial in (done, failed, landed):
        old.on_trial_start(0, [], trial)
        _report(old, trial, _result(1))
    old.on_trial_complete(0, [], landed)
    assert old.drain()
    landed_end = _child_of(client, exp, parent, "landed").info.end_time
    # The old driver is killed with its last writes still queued (an outbox that waits an
    # hour before delivering never delivers them).
    old._outbox = _Outbox(old._deliver, interval_s=3600.0)
    _report(old, done, _result(2))
    old.on_trial_complete(0, [], done)
    old.on_trial_error(0, [], failed)
    assert _child_of(client, exp, parent, "done").info.status == "RUNNING"

    # The new driver restores the trials from Tune's experiment state and never sees them end.
    new = _tracker(store, interval_s=0.0)
    done.status, failed.status, landed.status = "TERMINATED", "ERROR", "TERMINATED"
    new.on_experiment_end([done, failed, landed])

    run = _child_of(client, exp, parent, "done")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
    assert run.data.tags[TAG_STOPPED_EARLY] == "1"
    assert _child_of(client, exp, parent, "failed").info.status == "FAILED"
    assert _child_of(client, exp, parent, "landed").info.end_time == landed_end  # untouched


def _result_json(trial: _Trial, path: Path, epochs: tuple[int, ...]) -> None:
    """Give ``trial`` a result.json in ``path`` holding ``epochs``, as Tune's logger writes."""
    import json

    path.mkdir()
    trial.local_path = str(path)  # type: ignore[attr-defined]
    rows = [json.dumps(_result(e)) for e in epochs]
    (path / "result.json").write_text("\n".join(rows) + "\n")


def _first_epoch_delivered(store, tid: str) -> tuple[MLflowTracker, _Trial]:
    """An old driver's tracker that started trial ``tid`` and delivered its epoch 1."""
    old = _tracker(store, interval_s=0.0)
    trial = _Trial(tid)
    old.on_trial_start(0, [], trial)
    _report(old, trial, _result(1))
    assert old.drain()
    return old, trial


def test_a_restarted_driver_adds_the_last_epoch_its_cut_result_json_lacks(store, tmp_path):
    uri, client, exp, parent = store
    old, trial = _first_epoch_delivered(store, "cut")
    # Killed as the trial ended: Tune's snapshot holds epoch 3 as its last result, but the
    # driver's JSON logger had written only epochs 1 and 2 to result.json.
    _result_json(trial, tmp_path / "trial", (1, 2))
    trial.last_result, trial.status = _result(3), "TERMINATED"
    new = _tracker(store, interval_s=0.0)
    new.on_experiment_end([trial])
    run = _child_of(client, exp, parent, "cut")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
    assert steps == [1, 2, 3]


def test_a_resumed_trial_gets_the_epochs_its_old_driver_never_delivered(store, tmp_path):
    uri, client, exp, parent = store
    old, trial = _first_epoch_delivered(store, "lost")
    # Epochs 2 and 3 reach the old driver (Tune writes them to result.json) and its queue,
    # then it is killed; the trial's last checkpoint is epoch 3, so it resumes at epoch 4.
    old._outbox = _Outbox(old._deliver, interval_s=3600.0)
    for epoch in (2, 3):
        _report(old, trial, _result(epoch))
    _result_json(trial, tmp_path / "trial", (1, 2, 3))

    new = _tracker(store, interval_s=0.0)  # a restored stage: not fresh
    new.on_trial_start(0, [], trial)
    _report(new, trial, _result(4, restored_from_epoch=3))
    new.on_trial_complete(0, [], trial)
    assert new.drain()
    run = _child_of(client, exp, parent, "lost")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4]  # each once


def test_a_resume_delivers_the_last_writes_of_finished_trials_closed_as_killed(store, tmp_path):
    """A writer that could not deliver the last writes of trials Tune ended (it died, or
    broke, while MLflow stayed reachable) leaves their runs RUNNING; the sweep ends FAILED
    and ``close_parent`` closes them as KILLED. A resume delivers those writes from Tune's
    results, and each run ends as Tune says its trial did."""
    import json

    from sweeps.tracking import TAG_TRIAL, Sweep, close_parent

    uri, client, exp, parent = store
    old = _tracker(store, interval_s=0.0)
    done, failed, landed = _Trial("done"), _Trial("failed"), _Trial("landed")
    for trial in (done, failed, landed):
        old.on_trial_start(0, [], trial)
        _report(old, trial, _result(1))
    _report(old, landed, _result(2, test_acc=0.6))
    old.on_trial_complete(0, [], landed)
    assert old.drain()
    landed_end = _child_of(client, exp, parent, "landed").info.end_time
    # The writer stops delivering (an outbox that waits an hour): the trials end in Tune.
    old._outbox = _Outbox(old._deliver, interval_s=3600.0)
    _report(old, done, _result(2, test_acc=0.7))
    old.on_trial_complete(0, [], done)
    _report(old, failed, _result(2))
    old.on_trial_error(0, [], failed)
    assert old.outstanding == 4  # epoch 2 and the end of each, undelivered
    for trial in (done, failed):  # what Tune's JSON logger recorded of them
        (tmp_path / trial.trial_id).mkdir()
        trial.local_path = str(tmp_path / trial.trial_id)  # type: ignore[attr-defined]
        rows = [_result(1), trial.last_result]
        (tmp_path / trial.trial_id / "result.json").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    # The sweep ends FAILED, and MLflow takes the parent's close.
    close_parent(client, Sweep("t", exp, client.get_run(parent)), "FAILED", None, "failed")
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    assert {r.data.tags[TAG_TRIAL]: r.info.status for r in runs} == {
        "done": "KILLED",
        "failed": "KILLED",
        "landed": "FINISHED",
    }

    # `sweeps resume`: Tune restores the trials as ended; the new driver never saw them end.
    new = _tracker(store, interval_s=0.0)
    done.status, failed.status, landed.status = "TERMINATED", "ERROR", "TERMINATED"
    new.on_experiment_end([done, failed, landed])
    assert new.outstanding == 0
    run = _child_of(client, exp, parent, "done")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
    assert run.data.metrics["test_acc"] == 0.7
    assert run.data.tags[TAG_STOPPED_EARLY] == "1"  # 2 of max_epochs=200: the final tags landed
    run = _child_of(client, exp, parent, "failed")
    assert run.info.status == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2]
    assert _child_of(client, exp, parent, "landed").info.end_time == landed_end  # untouched


def _child_of(client: MlflowClient, exp: str, parent: str, tid: str) -> Any:
    (run,) = client.search_runs(
        [exp],
        filter_string=(f"tags.`{TAG_PARENT}` = '{parent}' and tags.`flatsweep.trial_id` = '{tid}'"),
    )
    return run


def test_runs_are_dated_by_tune_events_not_by_the_delayed_writes(store):
    uri, client, exp, parent = store
    tracker = _tracker(store, interval_s=2.0)  # every write lands 2 s after its event
    trial = _Trial("e")
    started = int(time.time() * 1000)
    tracker.on_trial_start(0, [], trial)
    _report(tracker, trial, _result(1))
    tracker.on_trial_complete(0, [], trial)
    ended = time.time() * 1000
    deadline = time.monotonic() + 60
    while (tracker._outbox.pending or not tracker._outbox.rounds) and time.monotonic() < deadline:
        time.sleep(0.05)
    delivered = time.time() * 1000
    run = _child(client, exp, parent)
    assert delivered - ended >= 1500  # the writes really were late
    assert started <= run.info.start_time <= ended
    assert started <= run.info.end_time <= ended


def test_gc_paused_restores_the_collector_as_it_was() -> None:
    import gc

    from sweeps.tracking import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed read")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left off, as the caller had it
    finally:
        gc.enable()


def test_find_children_reads_every_page_of_children_and_only_those(store, monkeypatch):
    """Children are read in pages of ``CHILDREN_PAGE`` (kept small for the reader's memory):
    with pages of 3, all 7 children of the parent come back once each, a stage filter keeps
    its own, and another parent's child is left out."""
    from sweeps import tracking

    _, client, exp, parent = store
    monkeypatch.setattr(tracking, "CHILDREN_PAGE", 3)
    ids = {
        client.create_run(
            exp,
            tags={TAG_PARENT: parent, tracking.TAG_STAGE: "finalist" if i < 2 else "search"},
        ).info.run_id
        for i in range(7)
    }
    other = client.create_run(exp).info.run_id
    client.create_run(exp, tags={TAG_PARENT: other})
    calls = []
    search = client.search_runs

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["max_results"])
        return search(*args, **kwargs)

    monkeypatch.setattr(client, "search_runs", counted)
    runs = tracking.find_children(client, exp, parent)
    assert sorted(r.info.run_id for r in runs) == sorted(ids)
    assert calls == [3, 3, 3]  # 3 + 3 + 1
    finalists = tracking.find_children(client, exp, parent, stage="finalist")
    assert len(finalists) == 2 and {r.data.tags[tracking.TAG_STAGE] for r in finalists} == {
        "finalist"
    }


class _FlakyStorage:
    """A trial's storage filesystem that refuses reads (an S3 503) while ``down``: the one
    fault here that a local filesystem cannot make real."""

    def __init__(self) -> None:
        self.down = True

    @property
    def storage_filesystem(self) -> _FlakyStorage:
        return self

    def open_input_stream(self, path: str) -> Any:
        if self.down:
            raise OSError("When reading s3://bucket/t/result.json: AWS Error SLOW_DOWN (503)")
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with


def test_results_storage_cannot_read_are_left_for_a_resume_not_closed_without_them(
    store, tmp_path, monkeypatch, caplog
):
    # Resumed on another machine (no staging copy) while storage refuses reads: read as "no
    # rows", the run was closed FINISHED with its last epoch alone and never completed.
    import sweeps.tracking

    monkeypatch.setattr(sweeps.tracking, "RESULTS_READ_TIMEOUT_S", 0.5)
    uri, client, exp, parent = store
    old, trial = _first_epoch_delivered(store, "t")
    old._outbox = _Outbox(old._deliver, interval_s=3600.0)  # the old driver dies with 2-4
    for e in (2, 3, 4):
        _report(old, trial, _result(e))
    _result_json(trial, tmp_path / "trial", (1, 2, 3, 4))
    storage = _FlakyStorage()
    trial.storage, trial.path = storage, str(tmp_path / "trial")  # type: ignore[attr-defined]
    trial.local_path = str(tmp_path / "elsewhere")  # type: ignore[attr-defined]
    trial.status = "TERMINATED"

    first = _tracker(store, interval_s=0.0)
    first.on_experiment_end([trial])
    assert not first.drain() and first.outstanding == 1  # the stage is not delivered
    assert "1 trials' results could not be read from storage" in caplog.text
    assert "AWS Error SLOW_DOWN (503)" in caplog.text
    run = _child_of(client, exp, parent, "t")
    assert run.info.status != "FINISHED"  # left for the next resume

    storage.down = False  # storage is back; the user resumes again
    again = _tracker(store, interval_s=0.0)
    again.on_experiment_end([trial])
    assert again.drain()
    run = _child_of(client, exp, parent, "t")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
    assert steps == [1, 2, 3, 4]


def test_a_restored_trial_whose_results_cannot_be_read_does_not_end_finished(
    store, tmp_path, monkeypatch
):
    # Restarted by a resume: its earlier epochs are owed to its run, so when it completes
    # the run stays KILLED for a later resume to fill in, never FINISHED without them.
    import sweeps.tracking

    monkeypatch.setattr(sweeps.tracking, "RESULTS_READ_TIMEOUT_S", 0.5)
    uri, client, exp, parent = store
    old, trial = _first_epoch_delivered(store, "r")
    old._outbox = _Outbox(old._deliver, interval_s=3600.0)  # epoch 2 dies with the driver
    _report(old, trial, _result(2))
    _result_json(trial, tmp_path / "trial", (1, 2))
    trial.storage, trial.path = _FlakyStorage(), str(tmp_path / "trial")  # type: ignore[attr-defined]
    trial.local_path = str(tmp_path / "elsewhere")  # type: ignore[attr-defined]

    new = _tracker(store, interval_s=0.0)
    new.on_trial_restore(0, [], trial)
    _report(new, trial, _result(3))
    trial.status = "TERMINATED"
    new.on_trial_complete(0, [], trial)
    assert not new.drain() and new.unreconciled == {"r"}
    run = _child_of(client, exp, parent, "r")
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc")) == [1, 3]


def test_a_result_line_cut_by_a_kill_keeps_the_rows_tune_appended_after_it(tmp_path):
    # Tune's JSON logger appends to result.json when a trial restarts: a line cut by a kill
    # can sit in the middle of the file, with good rows after it.
    import json

    from sweeps.tracking import _result_rows

    first = [json.dumps(_result(e)) for e in (1, 2, 3)]
    # restored from epoch 1's checkpoint: epochs 2 and 3 again, then 4
    rerun = [json.dumps(_result(e, train_seconds=9.0)) for e in (2, 3, 4)]
    cut = first[2][:20]  # epoch 3's line, cut; the restart's first line follows it
    text = "\n".join([first[0], first[1], cut + rerun[0], rerun[1], rerun[2]]) + "\n"
    (tmp_path / "result.json").write_text(text)
    trial = _Trial("cut")
    trial.local_path = str(tmp_path)  # type: ignore[attr-defined]
    rows = _result_rows(trial)
    # the rerun's epoch 2 went with the cut line: the first run's epoch 2 stands
    assert [(r["epoch"], r.get("train_seconds")) for r in rows] == [
        (1, None),
        (2, None),
        (3, 9.0),
        (4, 9.0),
    ]

    text = "\n".join([*first, *rerun]) + "\n"  # no cut: the rerun replaces what it repeats
    (tmp_path / "result.json").write_text(text)
    rows = _result_rows(trial)
    assert [(r["epoch"], r.get("train_seconds")) for r in rows] == [
        (1, None),
        (2, 9.0),
        (3, 9.0),
        (4, 9.0),
    ]

    # a diverged report repeats its epoch on purpose: both rows stay, as delivered live
    diverged = json.dumps(_result(3, diverged=1.0))
    (tmp_path / "result.json").write_text("\n".join([*first, diverged]) + "\n")
    rows = _result_rows(trial)
    assert [(r["epoch"], r.get("diverged")) for r in rows] == [
        (1, None),
        (2, None),
        (3, None),
        (3, 1.0),
    ]


def test_a_writer_survives_an_error_without_a_message(store, caplog):
    # Its log line read the message's first line: ConnectionError() crashed the writer thread.
    tracker = _tracker(store, interval_s=0.0)
    tracker.drain_timeout_s = 30.0  # a dead writer fails the drain, not the test's time
    real_log_batch = tracker._client.log_batch  # type: ignore[union-attr]
    calls = []

    def once(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError()
        return real_log_batch(*a, **kw)

    tracker._client.log_batch = once  # type: ignore[union-attr, method-assign]
    _train(tracker, _Trial("m"), 2)
    assert tracker.drain()
    assert "buffering and retrying" in caplog.text and "ConnectionError" in caplog.text
    tracker.close()
