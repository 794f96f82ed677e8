"""``MLflowTracker(process=True)``: the writes delivered by a real child process.

A real SQLite store in ``tmp_path`` and a real writer process; Tune's hooks are called
directly with minimal trial objects, as in ``test_writer.py``. Faults are made real: the child
is sent signals and killed, and a driver process is killed with the child alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sweeps.tracking import TAG_DEVICE, TAG_SPEC, TAG_STOPPED_EARLY, MLflowTracker, _Item
from tests.sweeps.conftest import BASE_TRAIN
from tests.sweeps.test_tracking import _report, _result
from tests.sweeps.test_writer import Store, _runs, _trial

ROOT = Path(__file__).resolve().parents[2]


def _tracker(store: Store, **kw: Any) -> MLflowTracker:
    uri, _, exp, parent = store
    return MLflowTracker(uri, exp, parent, "t", BASE_TRAIN, max_epochs=2, process=True, **kw)


def _child(tracker: MLflowTracker) -> subprocess.Popen:
    proc = tracker._outbox._children[0].proc
    assert proc is not None, "the writer process starts at the first write"
    return proc


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _run_trial(tracker: MLflowTracker, tid: str, epochs: int = 2, error: bool = False) -> None:
    trial = _trial(tid, **{"perturbation.radius": 0.01 * (1 + len(tid))})
    tracker.on_trial_start(0, [], trial)
    for epoch in range(1, epochs + 1):
        _report(tracker, trial, _result(epoch, device_used="cpu"))
    if error:
        tracker.on_trial_error(0, [], trial)
    else:
        tracker.on_trial_complete(0, [], trial)


def test_every_write_lands_from_a_separate_process(store):
    tracker = _tracker(store, fresh=True)
    started = int(time.time() * 1000)
    for i in range(5):
        _run_trial(tracker, f"t{i}")
    _run_trial(tracker, "bad", epochs=1, error=True)
    child = _child(tracker)
    assert _alive(child.pid) and child.pid != os.getpid()
    assert tracker.drain()
    ended = int(time.time() * 1000)

    runs = _runs(store)
    assert sorted(runs) == ["bad", "t0", "t1", "t2", "t3", "t4"]
    assert tracker.run_ids == {tid: r.info.run_id for tid, r in runs.items()}
    _, client, _, _ = store
    for tid, run in runs.items():
        assert run.info.status == ("FAILED" if tid == "bad" else "FINISHED")
        assert started <= run.info.start_time <= run.info.end_time <= ended
        assert run.data.tags[TAG_DEVICE] == "cpu"
        # The spec resolved in the driver reached the run: tag and params.
        assert run.data.params["perturbation.radius"] == str(0.01 * (1 + len(tid)))
        assert '"radius": ' + str(0.01 * (1 + len(tid))) in run.data.tags[TAG_SPEC]
    steps = [m.step for m in client.get_metric_history(runs["t3"].info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2]
    assert runs["t3"].data.tags[TAG_STOPPED_EARLY] == "0"
    assert tracker._client is None  # the driver itself made no MLflow client
    # The driver forgot what it sent for the finished trials (the child has it); the failed
    # one, which Tune may retry, is still known.
    assert set(tracker._specs) == set(tracker._configs) == {"bad"}

    tracker.close()
    assert child.wait(timeout=10) == 0
    assert tracker.outstanding == 0


def test_signals_for_the_driver_do_not_stop_its_writer(store):
    tracker = _tracker(store, fresh=True)
    _run_trial(tracker, "before")
    assert tracker.drain()  # the child is past its start-up
    child = _child(tracker)
    # A Ctrl-C, or `ray job stop`, is the driver's to handle: it then drains the writer.
    assert os.getpgid(child.pid) != os.getpgid(0)  # not in the driver's process group
    child.send_signal(signal.SIGINT)
    child.send_signal(signal.SIGTERM)
    _run_trial(tracker, "after")
    assert tracker.drain()
    assert child.poll() is None
    assert {tid: r.info.status for tid, r in _runs(store).items()} == {
        "before": "FINISHED",
        "after": "FINISHED",
    }
    tracker.close()


def test_a_killed_writer_is_reported_at_once_with_its_writes_outstanding(store):
    tracker = _tracker(store, fresh=True, drain_timeout_s=120.0)
    _run_trial(tracker, "landed")
    assert tracker.drain()
    child = _child(tracker)
    child.kill()
    child.wait(timeout=10)
    _run_trial(tracker, "owed")
    t0 = time.monotonic()
    assert not tracker.drain()
    assert time.monotonic() - t0 < 10  # no wait for the 120-s deadline
    assert tracker.outstanding == 4  # RUNNING, two epochs, FINISHED of "owed"
    assert tracker._outbox.broken
    assert set(_runs(store)) == {"landed"}
    tracker.close()  # nothing to stop, and no hang


def test_a_write_that_cannot_be_sent_is_reported_at_once(store, caplog):
    # A write that does not pickle (a bug) stopped the sender thread in silence: the drain
    # then waited out its whole deadline before the sweep could say anything.
    tracker = _tracker(store, fresh=True, drain_timeout_s=120.0)
    _run_trial(tracker, "landed")
    assert tracker.drain()
    # What no hook sends today (configs are validated, metrics are numbers): a one-off call
    # that does not pickle, queued as the hooks queue theirs.
    tracker._outbox.put(_Item("a call of a bug", "bad", call=lambda client: None))
    t0 = time.monotonic()
    assert not tracker.drain()
    assert time.monotonic() - t0 < 10  # no wait for the 120-s deadline
    assert tracker._outbox.broken
    assert "a write could not be sent to it (" in caplog.text
    tracker.close()


_DRIVER = """
import sys, time
from types import SimpleNamespace
sys.path.insert(0, {root!r})
from sweeps.tracking import MLflowTracker
from tests.sweeps.conftest import BASE_TRAIN

tracker = MLflowTracker({uri!r}, {exp!r}, {parent!r}, "t", BASE_TRAIN, 2, fresh=True, process=True)
trial = SimpleNamespace(trial_id="x", config={{"perturbation.radius": 0.01}}, last_result={{}})
tracker.on_trial_start(0, [], trial)
assert tracker.drain()
print(tracker._outbox.pids[0], flush=True)
time.sleep(600)
"""


def test_the_writer_exits_when_its_driver_is_killed(store):
    uri, _, exp, parent = store
    code = textwrap.dedent(_DRIVER).format(root=str(ROOT), uri=uri, exp=exp, parent=parent)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline() if driver.stdout else ""
        assert line.strip().isdigit(), f"the driver printed {line!r}"
        child = int(line)
        assert _alive(child)
        driver.kill()
        driver.wait(timeout=10)
        # Its stdin closed with the driver: the writer must not outlive it.
        deadline = time.monotonic() + 15
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        driver.kill()
    assert _runs(store)["x"].info.status == "RUNNING"  # what a resume then reconciles


@pytest.mark.parametrize("status", ["TERMINATED", "ERROR"])
def test_a_restored_driver_reconciles_through_its_writer(store, status):
    old = _tracker(store, fresh=True)
    trial = _trial("r")
    old.on_trial_start(0, [], trial)
    _report(old, trial, _result(1, device_used="cpu"))
    assert old.drain()
    old.close()
    # The driver died after epoch 2 ended in Tune, before its writes were delivered.
    trial.last_result = _result(2, device_used="cpu")
    trial.status = status
    new = _tracker(store, fresh=False)
    new.on_experiment_end([trial])  # restored from Tune's state: ended, never started here
    assert new.outstanding == 0
    run = _runs(store)["r"]
    assert run.info.status == ("FINISHED" if status == "TERMINATED" else "FAILED")
    assert new.run_ids == {"r": run.info.run_id}
    new.close()


def test_the_optuna_mirror_is_stored_by_the_writer_process_with_run_links(store, tmp_path):
    import optuna

    from sweeps import studies

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    memory = optuna.create_study(direction="maximize")
    tracker = _tracker(store, fresh=True)
    mirror = studies.StudyMirror(url, "m", ["max"], ["val_acc"])
    tracker.mirror_through(mirror)
    for i in range(3):
        _run_trial(tracker, f"t{i}")
        t = memory.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr(studies.ATTR_TRIAL, f"t{i}")
        memory.tell(t, 0.5 + i)
    assert tracker.drain()  # each trial's run first: the mirror's writes come after them
    for t in memory.trials:
        mirror.put(t)
    assert tracker.drain() and mirror.flush(0) and mirror.outstanding == 0
    stored = optuna.load_study(study_name="m", storage=url)
    by_id = {t.user_attrs[studies.ATTR_TRIAL]: t for t in stored.trials}
    assert [by_id[k].value for k in ("t0", "t1", "t2")] == [0.5, 1.5, 2.5]
    runs = _runs(store)
    assert {k: t.user_attrs[studies.ATTR_RUN] for k, t in by_id.items()} == {
        k: r.info.run_id for k, r in runs.items()
    }
    mirror.put_all(memory)  # a restored searcher offers them all again: none is stored twice
    assert tracker.drain()
    assert len(optuna.load_study(study_name="m", storage=url).trials) == 3
    # It did all that without torch (the specs come resolved from the driver): ~250 MB, not 850.
    assert "libtorch" not in Path(f"/proc/{_child(tracker).pid}/maps").read_text()
    tracker.close()


@pytest.mark.parametrize(
    ("setting", "trials", "expected"),
    [
        (None, 8, 0),  # a small stage: the process would cost more than it saves
        (None, 99, 0),
        (None, 100, 1),
        ("auto", 3000, 1),
        ("1", 8, 1),
        ("0", 3000, 0),
        (" 1 ", 8, 1),
        ("3", 8, 3),
    ],
)
def test_stages_of_many_trials_get_the_writer_process(setting, trials, expected, monkeypatch):
    from sweeps import runner

    if setting is None:
        monkeypatch.delenv("FLATSWEEP_MLFLOW_PROCESS", raising=False)
    else:
        monkeypatch.setenv("FLATSWEEP_MLFLOW_PROCESS", setting)
    assert runner.PROCESS_WRITER_MIN_TRIALS == 100
    assert runner._writer_process(trials) == expected
    fixed = setting is not None and setting.strip() != "auto"
    assert runner._writer_process() == (expected if fixed else 0)


@pytest.mark.parametrize("setting", ["-1", "1.5", "²", "33", "many"])
def test_a_bad_writer_process_count_is_refused_in_one_line(setting, monkeypatch):
    from sweeps import runner

    monkeypatch.setenv("FLATSWEEP_MLFLOW_PROCESS", setting)
    with pytest.raises(ValueError, match=r"^FLATSWEEP_MLFLOW_PROCESS must be .* from 1 to 32, but"):
        runner._writer_process(3000)


def test_several_writer_processes_share_the_trials_and_lose_nothing(store, tmp_path):
    import optuna

    from sweeps import studies

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    memory = optuna.create_study(direction="maximize")
    tracker = _tracker(store, fresh=True, processes=2)
    mirror = studies.StudyMirror(url, "m", ["max"], ["val_acc"])
    tracker.mirror_through(mirror)
    tracker.start()
    assert len(tracker._outbox.pids) == 2  # both start at once, before the first write
    assert tracker._outbox.ready(60)  # and open the store before it, too
    tids = [f"t{i}" for i in range(6)]
    for i, tid in enumerate(tids):
        _run_trial(tracker, tid)
        t = memory.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        t.set_user_attr(studies.ATTR_TRIAL, tid)
        memory.tell(t, float(i))
        mirror.put(memory.trials[-1])  # as the searcher does when the trial completes
    assert tracker.drain()
    # Round-robin at first sight: each child had three trials, and only its own.
    assert sorted(c.index for c in tracker._outbox._child_of.values()) == [0, 0, 0, 1, 1, 1]
    assert [sorted(c.known) for c in tracker._outbox._children] == [tids[::2], tids[1::2]]
    runs = _runs(store)
    assert sorted(runs) == tids
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert tracker.run_ids == {tid: r.info.run_id for tid, r in runs.items()}
    # Each trial's Optuna copy went to the child that made its run, which linked it.
    stored = optuna.load_study(study_name="m", storage=url).trials
    assert {t.user_attrs[studies.ATTR_TRIAL]: t.user_attrs[studies.ATTR_RUN] for t in stored} == {
        tid: r.info.run_id for tid, r in runs.items()
    }
    children = tracker._outbox.pids
    assert all(_alive(pid) and pid != os.getpid() for pid in children)
    tracker.close()
    assert not any(_alive(pid) for pid in children)


def test_one_killed_writer_of_several_owes_only_its_writes(store):
    tracker = _tracker(store, fresh=True, processes=2, drain_timeout_s=120.0)
    _run_trial(tracker, "a")  # child 1
    _run_trial(tracker, "b")  # child 2
    assert tracker.drain()
    first = tracker._outbox._children[0].proc
    first.kill()
    first.wait(timeout=10)
    _run_trial(tracker, "c")  # child 1, dead: owed
    _run_trial(tracker, "d")  # child 2: lands
    t0 = time.monotonic()
    assert not tracker.drain()
    assert time.monotonic() - t0 < 10  # no wait for the 120-s deadline
    assert tracker.outstanding == 4  # RUNNING, two epochs, FINISHED of "c"
    assert {i.trial for i in tracker._outbox.pending} == {"c"}
    assert tracker._outbox.broken
    assert {tid: r.info.status for tid, r in _runs(store).items()} == {
        "a": "FINISHED",
        "b": "FINISHED",
        "d": "FINISHED",
    }
    tracker.close()
