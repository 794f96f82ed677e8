"""What a training run reports: the metric names, and which test metric a validation metric
estimates.

Kept apart from ``trainers.loop`` (and free of PyTorch) so that a sweep's driver, which checks
objectives against these names, never imports PyTorch.
"""

from __future__ import annotations

#: What any epoch may report. ``val_*`` and ``gen_gap`` (train_acc - val_acc) need a
#: validation split; ``val_robust_acc`` also needs adversarial training.
EPOCH_METRICS = frozenset(
    {
        "epoch",
        "train_loss",  # mean cross-entropy at the unperturbed weights, on the training batches
        "train_acc",
        "val_loss",
        "val_acc",
        "val_robust_acc",  # PGD on the first ``adversarial.eval_examples`` val examples
        "gen_gap",
        "lr",
        "closure_passes",  # forward-backward passes this epoch (ERM 1 per step, AMP 1 + K, ...)
        "train_seconds",
        "images_per_s",
        "epoch_seconds",  # training plus evaluation
        "diverged",  # 1.0 on the (last) epoch whose loss was not finite
    }
)
#: What only the last epoch reports, once training has run all ``epochs``.
FINAL_METRICS = frozenset(
    {
        "test_loss",
        "test_acc",
        "test_robust_acc",  # PGD on the whole test set
        # with ``adversarial.autoattack``: standard L∞ AutoAttack (RobustBench's evaluation) of
        # the final weights on the first ``adversarial.autoattack_examples`` test examples
        "test_autoattack_acc",
        # with ``test_at_best_val``: the first epoch of highest val_robust_acc under PGD,
        # else of highest val_acc
        "best_val_epoch",
        "test_loss_at_best_val",
        "test_acc_at_best_val",
        "test_robust_acc_at_best_val",
        "train_seconds_total",  # sum of train_seconds over every epoch, resumed ones included
        "closure_passes_total",  # sum of closure_passes: the run's compute in passes
    }
)
#: The test set's own numbers: never a searched objective unless ``allow_test_selection``,
#: never what the finalists' winner is picked by.
TEST_METRICS = frozenset(m for m in FINAL_METRICS if m.startswith("test_"))
#: Diagnostics of the final weights: labelled as such, never objectives of a sweep.
DIAGNOSTIC_METRICS = frozenset(
    {
        # top Hessian eigenvalue of the loss on a fixed validation batch (BatchNorm in eval
        # mode), with ``hessian_lmax: true``; see ``trainers.diagnostics``
        "diag.hessian_lmax",
    }
)

_TEST_FOR_VAL = {
    "val_loss": "test_loss",
    "val_acc": "test_acc",
    "val_robust_acc": "test_robust_acc",
}


def test_metric_for(val_metric: str) -> str | None:
    """The test metric that ``val_metric`` estimates (``val_acc`` -> ``test_acc``), else None."""
    return _TEST_FOR_VAL.get(val_metric)


test_metric_for.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect
