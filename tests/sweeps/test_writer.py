"""The MLflow write path of ``MLflowTracker``: calls per trial, MLflow's batch limits, retries
that create no second run, several writers, restored runs.

A real SQLite store in ``tmp_path``; Tune's hooks are called directly with minimal trial
objects (the tracker reads only ``trial_id``, ``config`` and ``last_result``). Calls are
counted by wrapping ``MlflowClient``'s methods on the class, so every writer's own client is
seen; only calls made on the writer threads count (the test's own reads do not).
"""

from __future__ import annotations

import functools
import inspect
import json
import pickle
import threading
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from sweeps.tracking import (
    TAG_DEVICE,
    TAG_PARENT,
    TAG_SPEC,
    TAG_STOPPED_EARLY,
    TAG_TRIAL,
    MLflowTracker,
    _Item,
    _log_batches,
)
from tests.sweeps.conftest import BASE_TRAIN
from tests.sweeps.test_tracking import _report, _result

Store = tuple[str, MlflowClient, str, str]
WRITERS_ENV = "FLATSWEEP_MLFLOW_WRITERS"


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[SimpleNamespace]:
    """Every ``MlflowClient`` call made on a writer thread: its method ``name``, ``thread``,
    ``run_id`` (the first argument) and ``kw`` (the keyword arguments). The trackers write
    through MLflow's API (``FLATSWEEP_MLFLOW_BULK=0``): bulk writes make no such calls."""
    monkeypatch.setenv("FLATSWEEP_MLFLOW_BULK", "0")
    seen: list[SimpleNamespace] = []

    def counted(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(self: MlflowClient, *a: Any, **kw: Any) -> Any:
            thread = threading.current_thread().name
            if thread.startswith("mlflow-writer"):
                run_id = a[0] if a else None
                seen.append(SimpleNamespace(name=name, thread=thread, run_id=run_id, kw=kw))
            return fn(self, *a, **kw)

        return wrapper

    for name, fn in list(vars(MlflowClient).items()):
        if not name.startswith("_") and inspect.isfunction(fn):
            monkeypatch.setattr(MlflowClient, name, counted(name, fn))
    return seen


def _tracker(
    store: Store, *, fresh: bool = True, writers: int | None = None, max_epochs: int = 2, **kw: Any
) -> MLflowTracker:
    uri, _, exp, parent = store
    spec = kw.pop("base_spec", BASE_TRAIN)
    tracker = MLflowTracker(
        uri, exp, parent, "t", spec, max_epochs=max_epochs, fresh=fresh, writers=writers
    )
    # Long rounds: everything a test queues before its drain is one round (drain cuts the
    # wait short), so the merging under test does not depend on thread timing.
    tracker._outbox.interval_s = kw.pop("interval_s", 30.0)
    return tracker


def _trial(tid: str, **config: Any) -> SimpleNamespace:
    config = config or {"perturbation.radius": 0.01}
    return SimpleNamespace(trial_id=tid, config=config, status="RUNNING", last_result={})


def _runs(store: Store) -> dict[str, Any]:
    """trial id -> its child run; fails on a duplicate."""
    _, client, exp, parent = store
    runs = client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    by_trial = {r.data.tags[TAG_TRIAL]: r for r in runs}
    assert len(by_trial) == len(runs), "a trial has two runs"
    return by_trial


def _steps(store: Store, run: Any, key: str = "val_acc") -> list[int]:
    return [m.step for m in store[1].get_metric_history(run.info.run_id, key)]


def _expected_params(run: Any) -> dict[str, str]:
    spec = json.loads(run.data.tags[TAG_SPEC])
    return {p.key: p.value for p in MLflowTracker._params(spec)}


def test_a_fresh_two_epoch_trial_costs_three_calls(store, calls):
    tracker = _tracker(store)
    trial = _trial("a")
    tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        _report(tracker, trial, _result(epoch, device_used="cpu"))
    tracker.on_trial_complete(0, [], trial)
    assert tracker.drain()

    assert [c.name for c in calls] == ["create_run", "log_batch", "set_terminated"]
    # The closing tags, known when the run is created, ride on create_run: the log_batch
    # carries none (MLflow's SQL store writes them in a transaction of their own).
    assert TAG_DEVICE in calls[0].kw["tags"] and TAG_STOPPED_EARLY in calls[0].kw["tags"]
    assert not calls[1].kw.get("tags")
    run = _runs(store)["a"]
    assert tracker.run_ids == {"a": run.info.run_id}
    assert run.info.status == "FINISHED"
    assert run.data.params == _expected_params(run)
    assert run.data.params["perturbation.radius"] == "0.01"
    assert _steps(store, run) == [1, 2]
    assert _steps(store, run, "train_loss") == [1, 2]
    assert run.data.tags[TAG_STOPPED_EARLY] == "0"  # 2 of max_epochs 2
    assert run.data.tags[TAG_DEVICE] == "cpu"
    assert tracker.outstanding == 0


def test_batches_over_mlflows_limits_are_split_and_all_land(store, calls, monkeypatch):
    # 150 model args: 187 params (MLflow takes 100 per call); 1500 metrics in one epoch
    # (1000 per call). No model has 150 options, so the spec's check is told these exist.
    wide = {"name": "cnn1d", "args": {f"a{i:03d}": i for i in range(150)}}
    monkeypatch.setattr("trainers.models.option_names", lambda name: list(wide["args"]))
    tracker = _tracker(store, base_spec={**BASE_TRAIN, "model": wide})
    trial = _trial("wide")
    tracker.on_trial_start(0, [], trial)
    many = {f"m{i:04d}": float(i) for i in range(1500)}
    _report(tracker, trial, _result(1, **many))
    _report(tracker, trial, _result(2))
    tracker.on_trial_complete(0, [], trial)
    assert tracker.drain()

    batches = [c.kw for c in calls if c.name == "log_batch"]
    assert len(batches) == 3  # 100 params | 87 params + 913 metrics | 593 metrics + 3 tags
    assert all(len(b["params"]) <= 100 and len(b["metrics"]) <= 1000 for b in batches)
    run = _runs(store)["wide"]
    assert run.info.status == "FINISHED"
    assert len(run.data.params) == 187
    assert run.data.params == _expected_params(run)
    assert len(run.data.metrics) == 1500 + 3
    assert run.data.metrics["m1499"] == 1499.0
    assert _steps(store, run) == [1, 2]
    assert run.data.tags[TAG_STOPPED_EARLY] == "0"


def test_log_batches_respect_every_limit():
    params = [Param(f"p{i}", "v") for i in range(250)]
    epoch = _Item("e", "t", step=1, metrics=[Metric(f"m{i}", float(i), 0, 1) for i in range(1700)])
    close = _Item("s", "t", status="FINISHED", tags=[])
    batches = _log_batches(params, [epoch, close])
    for b in batches:
        assert len(b.params) <= 100 and len(b.metrics) <= 1000
        assert len(b.params) + len(b.metrics) + len(b.tags) <= 1000
    assert sum(len(b.params) for b in batches) == 250
    assert [m for b in batches for m in b.metrics] == epoch.metrics  # in order, none twice
    assert sum(b.carried.get(epoch, 0) for b in batches) == 1700
    # What already landed (a retry after a failed call) is not sent again.
    epoch.sent = 1200
    assert sum(len(c.metrics) for c in _log_batches([], [epoch])) == 500


def test_a_failure_after_create_run_is_retried_without_a_second_run(store, calls, monkeypatch):
    real = MlflowClient.log_batch
    failed = []

    # The server going down between two calls of one delivery: the one fault a single
    # process cannot make real.
    def down_once(self: MlflowClient, *a: Any, **kw: Any) -> Any:
        if not failed:
            failed.append(True)
            raise ConnectionError("tracking server unreachable")
        return real(self, *a, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", down_once)
    tracker = _tracker(store)  # fresh: nothing searched, so only the run id prevents a twin
    trial = _trial("f")
    tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        _report(tracker, trial, _result(epoch))
    tracker.on_trial_complete(0, [], trial)
    assert tracker.drain()

    assert failed
    counts = Counter(c.name for c in calls)
    assert counts["create_run"] == 1
    run = _runs(store)["f"]
    assert run.info.status == "FINISHED"
    assert run.data.params == _expected_params(run)
    assert _steps(store, run) == [1, 2]
    assert run.data.tags[TAG_STOPPED_EARLY] == "0"


def test_several_writers_keep_each_runs_order_and_status(store, calls):
    tracker = _tracker(store, writers=3, max_epochs=4, interval_s=0.0)
    trials = [_trial(f"t{i:02d}", **{"perturbation.radius": 0.01 + i / 1000}) for i in range(30)]
    for trial in trials:
        tracker.on_trial_start(0, [], trial)
    # Interleaved: every trial's epoch 1, then every trial's epoch 2, ...; a third of the
    # trials fail after epoch 2, a third finish, a third are still open at the end (KILLED).
    for epoch in range(1, 5):
        for i, trial in enumerate(trials):
            if i % 3 == 1 and epoch > 2:
                continue
            _report(tracker, trial, _result(epoch))
            if i % 3 == 1 and epoch == 2:
                tracker.on_trial_error(0, [], trial)
            elif i % 3 == 0 and epoch == 4:
                tracker.on_trial_complete(0, [], trial)
    tracker.on_experiment_end(trials)
    assert tracker.drain()
    assert tracker.outstanding == 0
    assert tracker.killed == 10

    runs = _runs(store)
    assert len(runs) == 30
    status = {0: "FINISHED", 1: "FAILED", 2: "KILLED"}
    for i, trial in enumerate(trials):
        run = runs[trial.trial_id]
        assert run.info.status == status[i % 3], trial.trial_id
        assert _steps(store, run) == ([1, 2] if i % 3 == 1 else [1, 2, 3, 4])
        assert run.data.params["perturbation.radius"] == str(0.01 + i / 1000)
    assert runs["t00"].data.tags[TAG_STOPPED_EARLY] == "0"
    # Each run was written by one writer, in step order; all three writers took part.
    by_run: dict[str, list[tuple[str, list[int]]]] = {}
    for c in calls:
        if c.name == "log_batch":
            steps = [m.step for m in c.kw["metrics"]]
            by_run.setdefault(c.run_id, []).append((c.thread, steps))
    assert {t for batches in by_run.values() for t, _ in batches} == {
        "mlflow-writer-0",
        "mlflow-writer-1",
        "mlflow-writer-2",
    }
    for batches in by_run.values():
        assert len({t for t, _ in batches}) == 1
        order = [s for _, steps in batches for s in steps]
        assert order == sorted(order)
    assert Counter(c.name for c in calls)["create_run"] == 30


def test_a_restored_trial_gets_no_second_run_and_no_repeated_epochs(store, calls):
    old = _tracker(store)
    trial = _trial("r")
    old.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        _report(old, trial, _result(epoch))
    assert old.drain()
    # The driver dies; the new one restores the trial from its epoch-1 checkpoint, so epoch 2
    # comes again before epoch 3.
    calls.clear()
    new = _tracker(store, fresh=False, max_epochs=3)
    new.on_trial_restore(0, [], trial)
    for epoch in (2, 3):
        _report(new, trial, _result(epoch))
    new.on_trial_complete(0, [], trial)
    assert new.drain()

    run = _runs(store)["r"]
    assert run.info.status == "FINISHED"
    assert _steps(store, run) == [1, 2, 3]
    assert run.data.tags[TAG_STOPPED_EARLY] == "0"
    # Found by tags, its history read once; still RUNNING, so no status call to reopen it.
    assert [c.name for c in calls] == [
        "search_runs",
        "get_metric_history",
        "log_batch",
        "set_terminated",
    ]


def test_a_found_run_gets_the_params_its_first_driver_never_wrote(store, monkeypatch):
    monkeypatch.setenv("FLATSWEEP_MLFLOW_BULK", "0")  # the fault is in MLflow's API path
    old = _tracker(store)
    real = MlflowClient.log_batch

    def bug(self: MlflowClient, *a: Any, **kw: Any) -> Any:
        raise KeyError("a bug in the first driver")  # not an outage: that writer stops

    monkeypatch.setattr(MlflowClient, "log_batch", bug)
    trial = _trial("p")
    old.on_trial_start(0, [], trial)
    _report(old, trial, _result(1))
    assert not old.drain()  # broken: the writes are reported outstanding, not lost silently
    assert old._outbox.broken and old.outstanding == 2
    assert _runs(store)["p"].data.params == {}  # created, then nothing

    monkeypatch.setattr(MlflowClient, "log_batch", real)
    new = _tracker(store, fresh=False)
    new.on_trial_restore(0, [], trial)
    for epoch in (1, 2):
        _report(new, trial, _result(epoch))
    new.on_trial_complete(0, [], trial)
    assert new.drain()
    run = _runs(store)["p"]
    assert run.data.params == _expected_params(run)
    assert _steps(store, run) == [1, 2]
    assert run.info.status == "FINISHED"


def test_a_broken_writer_does_not_stop_the_others(store, monkeypatch):
    monkeypatch.setenv("FLATSWEEP_MLFLOW_BULK", "0")  # the fault is in MLflow's API path
    tracker = _tracker(store, writers=2)
    real = MlflowClient.log_batch

    def bug_for_b(self: MlflowClient, run_id: str, *a: Any, **kw: Any) -> Any:
        if run_id == tracker.run_ids.get("b"):
            raise KeyError("a bug")
        return real(self, run_id, *a, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", bug_for_b)
    a, b = _trial("a"), _trial("b")  # round-robin: a on writer 0, b on writer 1
    for trial in (a, b):
        tracker.on_trial_start(0, [], trial)
        _report(tracker, trial, _result(1))
        tracker.on_trial_complete(0, [], trial)
    assert not tracker.drain()
    assert tracker.outstanding == 3  # b's start, epoch and completion
    runs = _runs(store)
    assert runs["a"].info.status == "FINISHED"
    assert runs["b"].info.status == "RUNNING"


def test_the_number_of_writers_follows_the_store(monkeypatch):
    monkeypatch.delenv(WRITERS_ENV, raising=False)
    args = ("1", "parent", "t", BASE_TRAIN, 2)
    assert MLflowTracker("sqlite:///x.db", *args).writers == 1
    assert MLflowTracker("file:///tmp/mlruns", *args).writers == 1
    assert MLflowTracker("https://mlflow.example", *args).writers == 4
    assert MLflowTracker("http://127.0.0.1:5000", *args, writers=2).writers == 2
    monkeypatch.setenv(WRITERS_ENV, "3")
    assert MLflowTracker("sqlite:///x.db", *args).writers == 3
    assert MLflowTracker("http://127.0.0.1:5000", *args, writers=1).writers == 1
    monkeypatch.setenv(WRITERS_ENV, "many")
    with pytest.raises(ValueError, match=f"{WRITERS_ENV} must be a whole number.*'many'"):
        MLflowTracker("sqlite:///x.db", *args)
    with pytest.raises(ValueError, match="writers=0"):
        MLflowTracker("sqlite:///x.db", *args, writers=0)


def test_a_pickled_tracker_keeps_its_config_and_writers_only(monkeypatch):
    monkeypatch.delenv(WRITERS_ENV, raising=False)
    tracker = MLflowTracker("http://127.0.0.1:5000", "1", "parent", "t", BASE_TRAIN, 2, writers=2)
    tracker._outbox.interval_s = 3600.0  # no server there: the write must not be tried
    tracker.on_trial_start(0, [], _trial("x"))  # a queued write: a thread and a lock
    state = tracker.__getstate__()
    assert set(state) == {
        "tracking_uri",
        "experiment_id",
        "parent_run_id",
        "sweep",
        "base_spec",
        "max_epochs",
        "drain_timeout_s",
        "stage",
        "writers",
        "process",
        "processes",
        "bulk",
    }
    pickle.dumps(tracker)  # no thread, lock or client in the state
    copy = MLflowTracker.__new__(MLflowTracker)  # what unpickling does, without pickle.loads
    copy.__setstate__(state)
    assert copy.writers == 2 and copy.outstanding == 0 and copy.run_ids == {}
    assert not copy.fresh
