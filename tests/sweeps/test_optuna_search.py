"""The sweep's OptunaSearch, driven as Tune drives it (suggest, per-epoch results, completion)
on a real in-memory Optuna study, without a cluster."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

import search_spaces
from sweeps.runner import _OptunaSearch

MAX_EPOCHS = 4


@pytest.fixture
def searcher() -> _OptunaSearch:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return _OptunaSearch(
        space=search_spaces.define_by_run("amp", search_spaces.resolve("amp")),
        metric="val_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        max_epochs=MAX_EPOCHS,
    )


def run_trial(s: _OptunaSearch, tid: str, losses: list[float], **last: float) -> None:
    assert s.suggest(tid) is not None
    result: dict = {}
    for epoch, loss in enumerate(losses, start=1):
        result = {"val_loss": loss, "epoch": epoch, "training_iteration": epoch, **last}
        s.on_trial_result(tid, result)
    s.on_trial_complete(tid, result)


def test_a_trial_the_scheduler_stopped_is_pruned_not_complete(searcher: _OptunaSearch) -> None:
    run_trial(searcher, "full", [0.9, 0.6, 0.5, 0.4])
    # Stopped by ASHA at epoch 2 with a lower loss than any full-length trial: told COMPLETE
    # it would be the study's best and head TPE's "good" set.
    run_trial(searcher, "stopped", [0.3, 0.2])
    run_trial(searcher, "diverged", [0.9, 9.9], diverged=1.0)

    by_tid = {t.user_attrs["flatsweep.trial_id"]: t for t in searcher._ot_study.trials}
    assert by_tid["full"].state == TrialState.COMPLETE and by_tid["full"].value == 0.4
    stopped = by_tid["stopped"]
    assert stopped.state == TrialState.PRUNED  # Optuna keeps its last epoch's value
    assert stopped.intermediate_values == {1: 0.3, 2: 0.2}
    # A diverged trial stays COMPLETE with its (worst) value: the point is bad.
    assert by_tid["diverged"].state == TrialState.COMPLETE
    assert searcher._ot_study.best_trial.number == by_tid["full"].number
