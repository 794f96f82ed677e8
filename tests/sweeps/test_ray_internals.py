"""Restored trials whose latest checkpoint a killed driver deleted (``sweeps.checkpoints``).

Tune's own checkpoint manager and ``Checkpoint`` objects over real files; the trial is a
stand-in with the two attributes the repair reads (``run_metadata``, ``storage``). The
driver-loss test in test_reliability.py covers the same repair inside a real resume.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint, CheckpointConfig

from sweeps.ray_internals import RepairCheckpoints, repair_trial
from trainers.checkpoint import load_checkpoint, save_checkpoint


def write(trial_dir: Path, index: int, epoch: int) -> Checkpoint:
    save_checkpoint(trial_dir / f"checkpoint_{index:06d}", {"epoch": epoch})
    return Checkpoint(str(trial_dir / f"checkpoint_{index:06d}"))


def trial_with(trial_dir: Path, *epochs_by_index: tuple[int, int], next_index: int):
    """A trial whose checkpoint manager registered checkpoints (index, epoch) in order."""
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for index, epoch in epochs_by_index:
        path = trial_dir / f"checkpoint_{index:06d}"
        manager._checkpoint_results.append(
            _TrainingResult(Checkpoint(str(path)), {"epoch": epoch, "training_iteration": epoch})
        )
        manager._latest_checkpoint_result = manager._checkpoint_results[-1]
    return SimpleNamespace(
        trial_id="t1",
        status="PENDING",
        run_metadata=SimpleNamespace(checkpoint_manager=manager),
        storage=SimpleNamespace(current_checkpoint_index=next_index),
    )


def epoch_of(checkpoint: Checkpoint) -> int:
    return load_checkpoint(checkpoint.path)["epoch"]


def test_a_trial_whose_checkpoints_exist_is_left_as_tune_restored_it(tmp_path):
    write(tmp_path, 3, 4)
    write(tmp_path, 4, 5)
    write(tmp_path, 5, 6)  # newer than the snapshot, but Tune's choice stands
    trial = trial_with(tmp_path, (3, 4), (4, 5), next_index=5)
    assert not repair_trial(trial)
    manager = trial.run_metadata.checkpoint_manager
    assert epoch_of(manager.latest_checkpoint_result.checkpoint) == 5
    assert len(manager._checkpoint_results) == 2 and trial.storage.current_checkpoint_index == 5


def test_deleted_checkpoints_are_dropped_and_the_newest_left_is_restored(tmp_path):
    # The snapshot names 000003 and 000004; the killed driver had registered 000005 and
    # 000006 and deleted both. 000007 was being copied when the worker died: half a file.
    write(tmp_path, 5, 6)
    write(tmp_path, 6, 7)
    (tmp_path / "checkpoint_000007").mkdir()
    (tmp_path / "checkpoint_000007" / "checkpoint.pt").write_bytes(b"PK\x03\x04half")
    trial = trial_with(tmp_path, (3, 4), (4, 5), next_index=5)
    assert repair_trial(trial)
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result
    assert epoch_of(latest.checkpoint) == 7
    # the other directories left are Tune's to delete, oldest first, the restore point last
    names = [Path(r.checkpoint.path).name for r in manager._checkpoint_results]
    assert names == ["checkpoint_000005", "checkpoint_000007", "checkpoint_000006"]
    # new checkpoints go past every directory the killed driver left
    assert trial.storage.current_checkpoint_index == 8
    write(tmp_path, 8, 8)
    manager.register_checkpoint(
        _TrainingResult(Checkpoint(str(tmp_path / "checkpoint_000008")), {"epoch": 8})
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000006", "checkpoint_000008"]


def test_nothing_whole_left_restarts_the_trial_from_scratch(tmp_path):
    (tmp_path / "checkpoint_000005").mkdir()  # a copy the killed worker never filled
    trial = trial_with(tmp_path, (3, 4), next_index=4)
    assert repair_trial(trial)
    assert trial.run_metadata.checkpoint_manager.latest_checkpoint_result is None
    assert trial.storage.current_checkpoint_index == 6


def test_the_callback_repairs_unfinished_trials_once_before_the_first_step(tmp_path):
    done, pending = tmp_path / "done", tmp_path / "pending"
    write(pending, 9, 10)
    finished = trial_with(done, (1, 2), next_index=2)
    finished.status = "TERMINATED"
    resumed = trial_with(pending, (7, 8), next_index=8)
    callback = RepairCheckpoints()
    callback.on_step_begin(0, [finished, resumed])
    assert (
        epoch_of(resumed.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint) == 10
    )
    # a finished trial is not touched even though its checkpoint is gone
    assert finished.run_metadata.checkpoint_manager._checkpoint_results
    write(pending, 10, 11)
    callback.on_step_begin(1, [resumed])  # later steps: Tune's own bookkeeping is right
    assert (
        epoch_of(resumed.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint) == 10
    )


def test_bounded_snapshots_keeps_tunes_adaptive_period_above_a_2s_floor(monkeypatch):
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    from sweeps.ray_internals import bounded_snapshots

    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    with bounded_snapshots(2.0):
        m = Manager(storage=None, checkpoint_period="auto")
        assert m._checkpoint_period == 2.0  # Tune's own start is 10 s
        m._update_auto_checkpoint_time(0.5)  # a big snapshot: 5% of the time
        assert m._checkpoint_period == pytest.approx(9.5)
        m._update_auto_checkpoint_time(0.01)
        assert m._checkpoint_period == 2.0
        fixed = Manager(storage=None, checkpoint_period=7)
        fixed._update_auto_checkpoint_time(5.0)
        assert fixed._checkpoint_period == 7.0
    assert Manager(storage=None, checkpoint_period="auto")._checkpoint_period == 10.0  # restored
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3")  # a user's number is left alone
    with bounded_snapshots(2.0):
        m = Manager(storage=None, checkpoint_period="auto")
        assert m._checkpoint_period == 10.0


def test_a_finished_trial_keeps_only_its_objectives_statistics():
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from sweeps.ray_internals import ForgetEndedTrialStats

    meta = _TrainingRunMetadata()
    for step in (1, 2, 3):
        for key in ("val_acc", "train_loss", "lr", "training_iteration"):
            meta.update_metric(key, 0.1 * step, step=step)
    before = meta.get_json_state()
    trial = SimpleNamespace(run_metadata=meta)
    ForgetEndedTrialStats(["val_acc"]).on_trial_complete(0, [], trial)

    kept = {"val_acc", "training_iteration"}
    assert set(meta.metric_analysis) == set(meta.metric_n_steps) == kept
    assert meta.metric_analysis["val_acc"]["max"] == pytest.approx(0.3)  # untouched
    # The snapshot JSON is rebuilt without them (Tune caches it).
    after = meta.get_json_state()
    assert '"train_loss"' in before and '"train_loss"' not in after and len(after) < len(before)
    # A metric reported again later (a trial Tune re-runs) starts afresh; a kept one goes on.
    meta.update_metric("train_loss", 0.5, step=4)
    meta.update_metric("val_acc", 0.7, step=4)
    assert meta.metric_analysis["train_loss"]["last-5-avg"] == 0.5
    assert meta.metric_analysis["val_acc"]["last-5-avg"] == pytest.approx(
        (0.1 + 0.2 + 0.3 + 0.7) / 4
    )


def test_a_finished_trials_checkpoints_keep_their_paths_and_only_the_objectives(tmp_path):
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from sweeps.ray_internals import ForgetEndedTrialStats

    full = {"val_acc": 0.5, "train_loss": 1.0, "hostname": "h", "training_iteration": 2}
    trial = trial_with(tmp_path, (1, 1), (2, 2), next_index=3)
    manager = trial.run_metadata.checkpoint_manager
    for result in manager._checkpoint_results:
        result.metrics = dict(full)
    meta = _TrainingRunMetadata()
    meta.checkpoint_manager = manager
    meta.last_result = dict(full)
    before = meta.get_json_state()
    ForgetEndedTrialStats(["val_acc"]).on_trial_complete(0, [], SimpleNamespace(run_metadata=meta))

    assert [Path(r.checkpoint.path).name for r in manager._checkpoint_results] == [
        "checkpoint_000001",
        "checkpoint_000002",
    ]
    for result in (*manager._checkpoint_results, manager._latest_checkpoint_result):
        assert result.metrics == {"val_acc": 0.5, "training_iteration": 2}
    assert meta.last_result == full  # a resumed driver may close the run from it
    after = meta.get_json_state()  # rebuilt, not the cached one
    assert len(after) < len(before)


def test_an_errored_trial_keeps_its_statistics():
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from sweeps.ray_internals import ForgetEndedTrialStats

    meta = _TrainingRunMetadata()
    meta.update_metric("train_loss", 1.0)
    ForgetEndedTrialStats(["val_acc"]).on_trial_error(0, [], SimpleNamespace(run_metadata=meta))
    assert set(meta.metric_analysis) == set(meta.metric_n_steps) == {"train_loss"}


def _run_buffered(tmp_path, trainable, monkeypatch, scheduler=None, **run: object):
    """Tune on the session's Ray inside ``buffered_results``; every remote call Tune sends a
    trial and every batch of results it processes, in order."""
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    from sweeps.ray_internals import buffered_results

    events: list[tuple[str, object]] = []
    schedule, process = TuneController._schedule_trial_task, TuneController._process_trial_results

    def scheduled(self, trial, method_name, *a, **k):
        events.append(("call", method_name))
        return schedule(self, trial, method_name, *a, **k)

    def processed(self, trial, results):
        events.append(("results", [r.get("training_iteration") for r in results]))
        return process(self, trial, results)

    monkeypatch.setattr(TuneController, "_schedule_trial_task", scheduled)
    monkeypatch.setattr(TuneController, "_process_trial_results", processed)
    with buffered_results(1.0):
        grid = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(scheduler=scheduler),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0, **run),
        ).fit()
    return grid, events


def _short_epochs(checkpoint_at: tuple[int, ...]):
    def trainable(config):
        import tempfile
        import time

        from ray import tune

        for epoch in range(1, 7):
            time.sleep(0.02)
            if epoch in checkpoint_at:
                with tempfile.TemporaryDirectory() as d:
                    Path(d, "epoch").write_text(str(epoch))
                    tune.report({"epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report({"epoch": epoch})

    return trainable


def test_buffered_results_arrive_in_fewer_calls_and_a_checkpoint_ends_a_buffer(
    ray_local, tmp_path, monkeypatch
):
    """Six 20-ms epochs with checkpoints at 3 and 6: two buffers, each closed by its checkpoint,
    then the function's end. Every call Tune sends gets its results processed: without the
    patched ``_on_training_result`` a third ``train_buffered`` races the one after the save
    and fails unhandled in the worker."""
    grid, events = _run_buffered(tmp_path, _short_epochs((3, 6)), monkeypatch)
    assert grid.num_errors == 0
    assert grid[0].metrics["epoch"] == 6
    assert grid[0].checkpoint is not None
    assert Path(grid[0].checkpoint.path, "epoch").read_text() == "6"
    calls = [name for kind, name in events if kind == "call"]
    batches = [r for kind, r in events if kind == "results"]
    assert calls.count("train_buffered") == len(batches) == 3
    assert calls.count("train") == 0
    assert batches[:2] == [[1, 2, 3], [4, 5, 6]]  # the third: the function's end
    assert calls.count("save") == 2


def test_results_after_a_stop_in_the_same_buffer_are_dropped(ray_local, tmp_path, monkeypatch):
    grid, events = _run_buffered(
        tmp_path, _short_epochs(()), monkeypatch, stop={"training_iteration": 2}
    )
    assert grid.num_errors == 0
    assert grid[0].metrics["training_iteration"] == 2  # epochs 3.. came in the buffer, unseen
    assert [r for kind, r in events if kind == "results"] == [[1, 2, 3, 4, 5, 6, None]]


def test_a_users_buffer_setting_leaves_tune_as_it_is(monkeypatch):
    from ray.tune.execution.tune_controller import TuneController

    from sweeps.ray_internals import buffered_results

    original = TuneController._schedule_trial_train
    with buffered_results(1.0):
        assert TuneController._schedule_trial_train is not original
    assert TuneController._schedule_trial_train is original
    monkeypatch.setenv("TUNE_RESULT_BUFFER_LENGTH", "1")
    with buffered_results(1.0):
        assert TuneController._schedule_trial_train is original


@pytest.mark.parametrize("scheduler", ["asha", "live-asha", "live-fifo", "hyperband"])
def test_only_schedulers_that_never_pause_get_batches(ray_local, tmp_path, monkeypatch, scheduler):
    """ASHA's and FIFO's results come in batches (the sweep's own subclasses of them too);
    synchronous HyperBand pauses trials at its rungs, so its trials get one result per call,
    as in Tune."""
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

    from sweeps.ray_internals import LiveASHAScheduler, LiveFIFOScheduler

    asha = {"metric": "epoch", "mode": "max", "max_t": 6, "grace_period": 2}
    built = {
        "asha": ASHAScheduler(**asha),
        "live-asha": LiveASHAScheduler(**asha),
        "live-fifo": LiveFIFOScheduler(),
        "hyperband": HyperBandScheduler(metric="epoch", mode="max", max_t=6),
    }[scheduler]
    grid, events = _run_buffered(tmp_path, _short_epochs(()), monkeypatch, scheduler=built)
    assert grid.num_errors == 0
    calls = [name for kind, name in events if kind == "call"]
    if scheduler != "hyperband":
        assert calls.count("train_buffered") >= 1 and calls.count("train") == 0
    else:
        assert calls.count("train_buffered") == 0 and calls.count("train") >= 6


def test_no_trial_dataframes_keeps_what_a_sweep_reads_of_the_grid(ray_local, tmp_path, monkeypatch):
    """Without the per-trial frames the grid still has every trial, its last result, its
    error and the error count; Tune's own read-back is back after the block."""
    from ray import tune
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis
    from ray.tune.logger import JsonLoggerCallback

    from sweeps.ray_internals import no_trial_dataframes

    def trainable(config):
        if config["x"] == 2:
            raise ValueError("boom")
        for epoch in (1, 2):
            tune.report({"epoch": epoch, "x": config["x"]})

    # Each trial's result.json, as a sweep writes it (runner: Tune's automatic loggers off, its
    # JSON logger on), whatever an earlier test in this process left in the environment.
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

    def run(name: str):
        return tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search([1, 2, 3])},
            run_config=tune.RunConfig(
                name=name, storage_path=str(tmp_path), verbose=0, callbacks=[JsonLoggerCallback()]
            ),
        ).fit()

    original = ExperimentAnalysis._fetch_trial_dataframes
    with no_trial_dataframes():
        assert ExperimentAnalysis._fetch_trial_dataframes is not original
        skipped = run("skipped")
    assert ExperimentAnalysis._fetch_trial_dataframes is original
    full = run("full")
    for grid in (skipped, full):
        assert len(grid) == 3
        assert grid.num_errors == 1
        ok = sorted((r.metrics["x"], r.metrics["epoch"]) for r in grid if r.error is None)
        assert ok == [(1, 2), (3, 2)]
    assert all(r.metrics_dataframe.empty for r in skipped)
    assert all(len(r.metrics_dataframe) == 2 for r in full if r.error is None)


# -- LiveTrialChoice: FIFO's choice from the live trials ----------------------------------------


class _Trial(SimpleNamespace):
    """A trial as a scheduler's choice reads it: its status; equal only to itself, as
    Tune's ``Trial`` (the list's ``index`` finds it by identity)."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class FakeController:
    """The two things a scheduler's choice reads, kept as Tune 2.60's controller keeps them:
    a trial is live from ``add`` until it ends TERMINATED; a requeued trial (``recover``)
    moves to the end of the list, PENDING and live again."""

    def __init__(self) -> None:
        self.trials: list[_Trial] = []
        self.live: set[_Trial] = set()

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return self.live

    def add(self, status: str = "PENDING") -> _Trial:
        trial = _Trial(status=status)
        self.trials.append(trial)
        if status != "TERMINATED":
            self.live.add(trial)
        return trial

    def set(self, trial: _Trial, status: str) -> None:
        trial.status = status
        if status == "TERMINATED":
            self.live.discard(trial)

    def recover(self, trial: _Trial) -> None:
        self.trials.pop(self.trials.index(trial))
        self.trials.append(trial)
        trial.status = "PENDING"
        self.live.add(trial)


def test_live_choice_is_fifos_choice_through_adds_ends_pauses_and_requeues():
    """Random runs of a controller: every choice equals Tune's own ``FIFOScheduler``'s, and
    the comparisons by position were exercised (several trials waiting, after requeues)."""
    import random

    from ray.tune.schedulers import FIFOScheduler

    from sweeps.ray_internals import LiveFIFOScheduler

    compared = 0
    for seed in range(40):
        rng = random.Random(seed)
        c, live = FakeController(), LiveFIFOScheduler()
        for _ in range(300):
            op = rng.random()
            if op < 0.25 or not c.trials:
                c.add()
            else:
                trial = rng.choice(c.trials)
                if trial.status == "TERMINATED":
                    continue
                if op < 0.45:
                    c.recover(trial)
                else:
                    c.set(trial, rng.choice(["RUNNING", "PAUSED", "TERMINATED", "ERROR"]))
            if rng.random() < 0.02:
                c.trials = list(c.trials)  # a new controller's list, the same trials
            waiting = sum(t.status in ("PENDING", "PAUSED") for t in c.live)
            compared += waiting > 1
            assert live.choose_trial_to_run(c) is FIFOScheduler().choose_trial_to_run(c)
    assert compared > 1000


def test_live_choice_leaves_a_crowd_and_a_stray_trial_to_tunes_walk(monkeypatch):
    from ray.tune.schedulers import FIFOScheduler

    from sweeps import ray_internals
    from sweeps.ray_internals import LiveFIFOScheduler

    walks = []
    monkeypatch.setattr(
        FIFOScheduler, "choose_trial_to_run", lambda self, c: walks.append(c) or "walked"
    )
    monkeypatch.setattr(ray_internals, "LIVE_SCAN_MAX", 3)
    c = FakeController()
    for status in ("PENDING", "RUNNING", "PENDING"):
        c.add(status)
    scheduler = LiveFIFOScheduler()
    assert scheduler.choose_trial_to_run(c) is c.trials[0] and not walks
    c.live.add(_Trial(status="PENDING"))  # four live: a crowd
    assert scheduler.choose_trial_to_run(c) == "walked"
    c.live = {c.trials[0], _Trial(status="PENDING")}  # live but in no list: Tune decides
    assert scheduler.choose_trial_to_run(c) == "walked"
    assert len(walks) == 2


def test_live_choice_matches_tune_in_a_real_run_with_requeued_and_stopped_trials(
    ray_local, tmp_path
):
    """Real Tune (ASHA stopping trials, two trials failing once and requeued at the end of
    the list): at every step the live choice is what ``FIFOScheduler`` would have chosen."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from sweeps.ray_internals import LiveASHAScheduler

    choices: list[tuple[object, object]] = []

    class Checked(LiveASHAScheduler):
        def choose_trial_to_run(self, tune_controller):
            fifo = FIFOScheduler.choose_trial_to_run(self, tune_controller)
            mine = super().choose_trial_to_run(tune_controller)
            choices.append((mine, fifo))
            return mine

    marks = tmp_path / "marks"
    marks.mkdir()

    def trainable(config):
        import time

        mark = marks / str(config["x"])
        if config["x"] in (1, 4) and not mark.exists():
            mark.write_text("failed once")
            raise RuntimeError("first attempt fails")
        for epoch in range(1, 5):
            time.sleep(0.01)
            tune.report({"epoch": epoch, "score": config["x"] * epoch})

    grid = tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search(list(range(8)))},
        tune_config=tune.TuneConfig(
            scheduler=Checked(time_attr="epoch", metric="score", mode="max", grace_period=1),
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), verbose=0, failure_config=tune.FailureConfig(max_failures=1)
        ),
    ).fit()
    assert grid.num_errors == 0 and len(grid) == 8
    assert {p.name for p in marks.iterdir()} == {"1", "4"}  # both were requeued
    assert len(choices) > 8
    assert all(mine is fifo for mine, fifo in choices)
    assert sum(mine is not None for mine, _ in choices) >= 10  # 8 starts and 2 restarts


# -- PruneSyncedTrials: finished trials leave the driver's staging directory --------------------


def test_copied_means_every_staged_file_is_in_storage_byte_for_byte(tmp_path):
    from sweeps.ray_internals import _copied

    staging, stored = tmp_path / "staging", tmp_path / "stored"
    (staging / "sub").mkdir(parents=True)
    (staging / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (staging / "sub" / "params.json").write_text("{}")
    assert _copied(str(staging), str(stored)) is False  # nothing copied yet
    (stored / "sub").mkdir(parents=True)
    (stored / "result.json").write_text('{"epoch": 1}\n')  # an earlier copy, mid-trial
    (stored / "sub" / "params.json").write_text("{}")
    assert _copied(str(staging), str(stored)) is False
    (stored / "result.json").write_text('{"epoch": 1}\n{"epoch": 3}\n')  # same size, other bytes
    assert _copied(str(staging), str(stored)) is False
    (stored / "result.json").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    assert _copied(str(staging), str(stored)) is True
    assert _copied(str(tmp_path / "gone"), str(stored)) is None


def _ended_trial(tmp_path, name: str, copied: bool):
    from pyarrow.fs import LocalFileSystem

    staging, stored = tmp_path / "staging" / name, tmp_path / "stored" / name
    staging.mkdir(parents=True)
    (staging / "result.json").write_text(name)
    if copied:
        stored.mkdir(parents=True)
        (stored / "result.json").write_text(name)
    storage = SimpleNamespace(
        storage_filesystem=LocalFileSystem(),
        trial_driver_staging_path=str(staging),
        trial_fs_path=str(stored),
    )
    return SimpleNamespace(storage=storage), staging


def test_prune_waits_for_an_idle_syncer_and_keeps_what_storage_lacks(tmp_path):
    from sweeps.ray_internals import PruneSyncedTrials

    copying = SimpleNamespace(is_running=True)
    syncer = SimpleNamespace(_sync_process=copying)
    prune = PruneSyncedTrials(every_s=0.0)
    done, done_dir = _ended_trial(tmp_path, "done", copied=True)
    behind, behind_dir = _ended_trial(tmp_path, "behind", copied=False)
    for trial in (done, behind):
        prune.on_trial_complete(0, [], trial)
    prune.prune(syncer)
    assert done_dir.exists() and behind_dir.exists()  # a copy is running: nothing deleted
    copying.is_running = False
    prune.prune(syncer)
    assert not done_dir.exists() and behind_dir.exists() and prune.pruned == 1
    stored = tmp_path / "stored" / "behind"
    stored.mkdir()
    (stored / "result.json").write_text("behind")  # the next copy brought it
    syncer._sync_process = None  # Tune's wait() clears it
    prune.prune(syncer)
    assert not behind_dir.exists() and prune.pruned == 2


def test_finished_trials_leave_staging_and_storage_keeps_all_they_wrote(
    ray_local, tmp_path, monkeypatch
):
    """Real Tune, snapshots every step: each finished trial's staging directory is deleted
    once Tune's copy has brought its files, always by the snapshot manager with its syncer
    idle, and storage holds every trial's full result.json and params."""
    import json

    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from sweeps.ray_internals import PruneSyncedTrials

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    staged = {}
    prune = PruneSyncedTrials(every_s=0.0)
    checked, busy_deletes = [], []
    own = prune.prune

    def watched(syncer):
        checked.append(syncer)
        process, before = syncer._sync_process, prune.pruned
        own(syncer)
        if process is not None and process.is_running:
            busy_deletes.append(prune.pruned - before)

    prune.prune = watched

    class Where(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            staged[trial.trial_id] = (trial.local_path, trial.path)

    def trainable(config):
        import time

        for epoch in range(1, 4):
            time.sleep(0.05)
            tune.report({"epoch": epoch, "x": config["x"]})

    with prune.active():
        grid = tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search(list(range(6)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path),
                verbose=0,
                callbacks=[JsonLoggerCallback(), prune, Where()],
            ),
        ).fit()
    assert grid.num_errors == 0 and len(grid) == 6
    assert len({id(s) for s in checked}) == 1
    assert not any(busy_deletes)  # never while Tune's copy ran
    assert prune.pruned >= 3  # the last trials end after the last snapshot
    gone = [path for path, _ in staged.values() if not os.path.exists(path)]
    assert len(gone) == prune.pruned
    for _, stored in staged.values():
        lines = Path(stored, "result.json").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
        assert Path(stored, "params.json").exists() and Path(stored, "params.pkl").exists()
    assert sorted(r.metrics["x"] for r in grid) == list(range(6))


def _reports_then_fails(config: dict) -> None:
    """Five quick epochs, then an error: a trial whose code breaks after it has reported."""
    import time

    from ray import tune

    for epoch in range(1, 6):
        time.sleep(0.02)
        tune.report({"epoch": epoch})
    raise RuntimeError("broke after epoch 5")


@pytest.mark.parametrize("keep", [False, True])
def test_a_trial_that_fails_after_reporting_delivers_its_epochs_with_buffered_results(
    ray_local, tmp_path, keep
):
    # Tune's train_buffered collects in a local list that the error takes with it: buffered,
    # the five epochs that ran never reached the driver (unbuffered, each one does).
    from ray import tune
    from ray.tune import Callback
    from ray.tune.experiment import Experiment

    from sweeps.ray_internals import LiveFIFOScheduler, buffered_results, results_before_an_error

    class Epochs(Callback):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001, ANN003, ANN201
            self.seen.append(result["epoch"])

    trainable = tune.with_parameters(_reports_then_fails)
    if keep:
        trainable = results_before_an_error(trainable)
        # the name Tune records with the experiment, which a restore checks
        assert Experiment.get_trainable_name(trainable) == "_reports_then_fails"
    epochs = Epochs()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=1, scheduler=LiveFIFOScheduler()),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            callbacks=[epochs],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with buffered_results(1.0):
        grid = tuner.fit()
    assert grid.num_errors == 1  # the trial still fails, as in Tune
    assert "broke after epoch 5" in str(grid[0].error)
    assert epochs.seen == ([1, 2, 3, 4, 5] if keep else [])


def _reports_then_maybe_fails(config: dict) -> None:
    import time

    from ray import tune

    for epoch in range(1, 6):
        time.sleep(0.02)
        tune.report({"epoch": epoch})
    if config["fail"]:
        raise RuntimeError("broke after epoch 5")


def test_a_held_error_is_not_the_next_trials_when_the_actor_is_reused(ray_local, tmp_path):
    # The first trial is stopped on the results before its error (its fifth epoch meets the
    # stop criterion), so its error is never raised; the actor then runs the next trial.
    from ray import tune

    from sweeps.ray_internals import LiveFIFOScheduler, buffered_results, results_before_an_error

    tuner = tune.Tuner(
        results_before_an_error(tune.with_parameters(_reports_then_maybe_fails)),
        param_space={"fail": tune.grid_search([True, False])},
        tune_config=tune.TuneConfig(
            scheduler=LiveFIFOScheduler(), reuse_actors=True, max_concurrent_trials=1
        ),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path),
            stop={"epoch": 5},
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    with buffered_results(1.0):
        grid = tuner.fit()
    assert grid.num_errors == 0
    assert [r.metrics["epoch"] for r in grid] == [5, 5]
