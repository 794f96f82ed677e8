"""sweeps/searchers.py's schedulers: what each builds from the spec, and a real HyperBand sweep
that stops trials early with fewer slots than synchronous HyperBand's brackets need."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from sweeps import tracking
from sweeps.searchers import SCHEDULERS, hyperband_brackets
from sweeps.spec import SweepSpec
from tests.sweeps.conftest import sweep_dict

EARLY = [n for n in SCHEDULERS.names() if SCHEDULERS.get(n).early_stopping]


def spec_of(epochs: int = 9, milestones: list[int] | None = None, **scheduler) -> SweepSpec:  # noqa: ANN003
    d = sweep_dict(scheduler={"reduction_factor": 3, **scheduler})
    d["train"]["epochs"] = epochs
    if milestones:
        d["train"]["schedule"] = {"name": "multistep", "milestones": milestones}
    return SweepSpec.model_validate(d)


def first_rungs(s: ASHAScheduler) -> list[float]:
    """The earliest rung of each bracket (Ray keeps a bracket's rungs latest first)."""
    return [b._rungs[-1][0] for b in s._brackets if b._rungs]


def test_hyperband_is_asha_over_the_specs_brackets_timed_like_asha():
    spec = spec_of(name="hyperband", grace_period=1)
    hb = SCHEDULERS.get("hyperband").build(spec, 9)
    asha = SCHEDULERS.get("asha").build(spec_of(name="asha", grace_period=1), 9)
    assert isinstance(hb, ASHAScheduler) and isinstance(asha, ASHAScheduler)
    assert hb._time_attr == asha._time_attr == "epoch"
    assert (hb._metric, hb._mode, hb._max_t) == ("val_acc", "max", 9)
    # HyperBand's s_max + 1 brackets for R = 9 / 1, eta = 3: first rungs 1, 3, 9
    assert len(hb._brackets) == 3 and first_rungs(hb) == [1, 3, 9]
    assert len(asha._brackets) == 1  # ASHA keeps its single bracket by default

    given = SCHEDULERS.get("hyperband").build(spec_of(name="hyperband", brackets=2), 9)
    assert len(given._brackets) == 2 and first_rungs(given) == [1, 3]


def test_every_scheduler_chooses_the_next_trial_among_live_trials_only():
    """FIFO's and ASHA's walk over every trial, finished ones included, at each step of
    Tune's loop is replaced (``ray_internals.LiveTrialChoice``)."""
    from sweeps.ray_internals import LiveTrialChoice

    for name in SCHEDULERS.names():
        spec = spec_of(name=name, grace_period=1)
        assert isinstance(SCHEDULERS.get(name).build(spec, 9), LiveTrialChoice), name


@pytest.mark.parametrize(
    ("grace", "max_t", "eta", "n"),
    [(1, 9, 3, 3), (1, 8, 3, 2), (1, 30, 3, 4), (100, 200, 3, 1), (1, 200, 3, 5), (1, 10**4, 2, 8)],
)
def test_hyperband_brackets_are_those_whose_first_rung_fits(grace, max_t, eta, n):
    assert hyperband_brackets(grace, max_t, eta) == n


@pytest.mark.parametrize("name", EARLY)
def test_no_trial_is_judged_before_the_lr_schedules_first_decay(name):
    # The README's promise: the grace period (by default the first milestone) is the first
    # rung of every bracket. Driven through the scheduler's own calls, each trial worse than
    # the last: nothing may stop before epoch 3, something must at it.
    spec = spec_of(milestones=[3, 6], name=name)
    assert spec.grace_period == 3
    s = SCHEDULERS.get(name).build(spec, spec.train.epochs)
    assert min(first_rungs(s)) == 3
    np.random.seed(0)  # Ray picks each trial's bracket with numpy's global generator
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(30)]
    stopped = []
    for epoch in (1, 2, 3):
        for i, t in enumerate(trials):
            if epoch == 1:
                s.on_trial_add(None, t)
            if t.trial_id in stopped:
                continue
            decision = s.on_trial_result(None, t, {"epoch": epoch, "val_acc": 1 - i / 100})
            if decision == TrialScheduler.STOP:
                assert epoch >= 3, (name, t.trial_id, epoch)
                stopped.append(t.trial_id)
    assert stopped


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_a_result_without_an_epoch_is_passed_over(name):
    # An out-of-memory trial reports {"oom": 1} and no epoch or objective.
    s = SCHEDULERS.get(name).build(spec_of(name=name), 9)
    t = SimpleNamespace(trial_id="oom")
    s.on_trial_add(None, t)
    assert s.on_trial_result(None, t, {"oom": 1.0}) == TrialScheduler.CONTINUE
    s.on_trial_complete(None, t, {"oom": 1.0})


def test_a_hyperband_sweep_with_two_slots_stops_trials_early(ray_local, tmp_path: Path):
    from sweeps.runner import run_sweep

    d = sweep_dict(
        "hb",
        num_samples=6,
        max_concurrent=2,  # fewer than synchronous HyperBand's n0 = 3 at 9 epochs
        scheduler={"name": "hyperband", "grace_period": 1, "reduction_factor": 3},
        storage_path=str(tmp_path / "ray"),
        tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
    )
    d["train"]["epochs"] = 9
    spec = SweepSpec.model_validate(d)
    np.random.seed(0)  # the brackets the driver's scheduler puts the trials in
    result = run_sweep(spec, yaml.safe_dump(d), progress=False)
    client = MlflowClient(result.tracking_uri)
    runs = tracking.children(client, tracking.find_sweep(client, "hb"), "search")
    assert len(runs) == 6
    early = [r for r in runs if r.data.tags.get(tracking.TAG_STOPPED_EARLY) == "1"]
    assert early, "no trial was stopped early"
    assert len(early) < len(runs) and result.best is not None
    # Every trial that ran its 9 epochs is a complete Optuna trial, the best among them.
    study = optuna.load_study(study_name="hb", storage=spec.optuna_storage_url())
    states = {t.user_attrs.get("flatsweep.trial_id"): t.state for t in study.trials}
    full = [r for r in runs if r not in early]
    assert all(states[r.data.tags[tracking.TAG_TRIAL]].name == "COMPLETE" for r in full)
    # The brackets it ran are on the parent (HyperBand's s_max + 1 for R = 9, eta = 3).
    params = tracking.find_sweep(client, "hb").parent.data.params
    assert (params["scheduler.brackets"], params["scheduler.reduction_factor"]) == ("3", "3.0")


def test_the_brackets_recorded_are_those_the_scheduler_runs():
    from sweeps.searchers import scheduler_brackets

    for scheduler, n in [({"name": "hyperband", "grace_period": 1}, 3), ({"name": "asha"}, 1)]:
        spec = spec_of(**scheduler)
        built = SCHEDULERS.get(spec.scheduler.name).build(spec, spec.train.epochs)
        assert scheduler_brackets(spec) == len(built._brackets) == n
    assert scheduler_brackets(spec_of(name="fifo")) is None
