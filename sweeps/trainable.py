"""The Ray Tune function trainable: one trial = one ``trainers.fit`` call.

As in Ray Tune's examples: the static TrainSpec arrives through ``tune.with_parameters``, the
searched values through ``config``; every epoch is reported with ``tune.report`` and a
``tune.Checkpoint``; a restarted trial resumes from ``tune.get_checkpoint()``. No MLflow here:
the driver is the only MLflow writer (see ``sweeps.tracking``).

Every result also says which device the trial really trained on (``device_used``, a string)
and whether Ray reserved a GPU for a trial that trains on CPU (``gpu_reserved_on_cpu``, a
bool): ``train.device: auto`` resolves inside the trial, on whatever node Ray placed it, so
only the trial knows. Neither is a number, so neither becomes an MLflow metric; the tracker
turns them into the child run's tags.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from trainers import EPOCH_METRICS, FINAL_METRICS, TrainSpec

# PyTorch and the training loop are imported inside the functions that run in trial workers:
# the driver imports this module only to hand ``train_trial`` to Tune, and would otherwise
# pay PyTorch's import (about 2 s on a small CPU) for nothing.

#: The metrics a trial reports (declared in ``trainers`` next to where they are computed).
REPORTED_METRICS = EPOCH_METRICS | FINAL_METRICS


#: The confirmation stage runs an exact list of configs as a Tune grid over this one key.
ROW = "_row"


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's own config: the grid row of a confirmation trial, else the searched point.

    Keys starting with "_" describe the trial (its stage, the config it confirms) for the
    tracker; the rest are TrainSpec overrides (dotted names, or a whole sub-spec).
    """
    return dict(config[ROW]) if ROW in config else dict(config)


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's refusal (a RuntimeError)."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def trial_device(requested: str, gpu_ids: Sequence[int | str] = ()) -> dict[str, Any]:
    """What a trial reports about its device, checked before anything is built.

    Args:
        requested: the spec's ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).
        gpu_ids: the GPUs Ray reserved for this trial (``ray.get_gpu_ids()``); Ray makes them
            the worker's ``CUDA_VISIBLE_DEVICES``, so ``cuda:0`` is the first of them.

    Returns ``{"device_used": "cpu" | "cuda:N" | ..., "gpu_reserved_on_cpu": bool}``; ``auto``
    is CUDA when the worker has it, else CPU (``trainers.loop.resolve_device``, as ``fit``).

    Raises RuntimeError (one line naming ``train.device``) when ``requested`` is a CUDA
    device the worker does not have: a GPU Ray reserved on a node without CUDA (logical
    GPUs, a missing driver) fails at once, not deep inside the model's first ``.to()``.
    """
    import torch

    from trainers.loop import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda":
        return {"device_used": str(device), "gpu_reserved_on_cpu": bool(gpu_ids)}
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ray_gpus = f"Ray reserved GPU ids {list(gpu_ids)}" if gpu_ids else "resources.gpu is 0"
    if count == 0:
        raise RuntimeError(
            f"train.device is {requested!r}, but this trial's worker has no CUDA device "
            f"(torch.cuda.is_available() is False; {ray_gpus}); use train.device auto (CPU "
            f"where there is no CUDA) or cpu, or run on nodes with CUDA GPUs"
        )
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= count:
        raise RuntimeError(
            f"train.device is {requested!r}, but this trial's worker sees {count} CUDA "
            f"device(s) ({ray_gpus}); allowed: auto, cpu, cuda, cuda:0..cuda:{count - 1}"
        )
    return {"device_used": f"cuda:{index}", "gpu_reserved_on_cpu": False}


def train_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    worst: dict[str, float],
    checkpoint_every_s: float = 0.0,
) -> None:
    """Run the TrainSpec ``base`` with the searched values in ``config`` merged in.

    A run whose loss turns NaN/Inf reports the finite ``worst`` values with ``diverged=1`` and
    returns normally: Ray's OptunaSearch would drop a NaN and leave the Optuna trial running,
    and Tune would retry an exception as a failure. An out-of-memory error reports
    ``oom=1`` *without* the objective, so Optuna records the trial as pruned rather than as a
    bad configuration, and the memory is released before the worker takes another trial.
    A CUDA ``train.device`` on a worker without CUDA raises before anything is built (see
    ``trial_device``); Tune retries it ``failure.max_failures`` times, each failing at once.
    """
    import torch

    from trainers.checkpoint import load_checkpoint
    from trainers.loop import fit

    point = {k: v for k, v in trial_config(config).items() if not k.startswith("_")}
    spec = TrainSpec.model_validate(base).with_overrides(point)
    device = trial_device(spec.device, ray.get_gpu_ids())
    checkpoint = tune.get_checkpoint()
    resume = checkpoint.to_directory() if checkpoint is not None else None
    restored_from = 0.0
    if resume is not None:
        restored_from = float(load_checkpoint(resume)["epoch"])
    last_save = time.monotonic()
    reported = False
    # epoch 0 restarts from scratch; which epoch a restored trial resumed from is recorded
    extra = {"oom": 0.0, "restored_from_epoch": restored_from, **device}

    def on_epoch_end(metrics: dict[str, float], save: Callable[[str | Path], Path]) -> None:
        nonlocal last_save, reported
        reported = True
        # Checkpoint at most every `checkpoint_every_s`: with epochs of a fraction of a second
        # a checkpoint per epoch would dominate the trial (and force Tune snapshots).
        if time.monotonic() - last_save < checkpoint_every_s and metrics["epoch"] < spec.epochs:
            tune.report({**metrics, **extra})
            return
        with tempfile.TemporaryDirectory() as d:
            save(d)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(d))
        last_save = time.monotonic()

    try:
        result = fit(spec, on_epoch_end=on_epoch_end, resume=resume)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        # Drop the frames that still reference the model and batches before freeing.
        e.__traceback__ = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        tune.report({"oom": 1.0, "diverged": 0.0, "error": str(e).splitlines()[0][:200], **device})
        return
    if not reported and result.history and result.status != "diverged":
        # Restored from its last epoch's checkpoint: the driver that got that epoch's report
        # died before recording it (the checkpoint is saved before the report), and nothing
        # is left to train. Report the epoch again from the checkpoint's history, so the
        # trial's final (and test) metrics are recorded.
        tune.report({**result.final, **extra})
        return
    if result.status == "diverged":
        last = {
            k: v for k, v in result.final.items() if isinstance(v, int | float) and math.isfinite(v)
        }
        tune.report({**last, **worst, "diverged": 1.0, "oom": 0.0, **device})
