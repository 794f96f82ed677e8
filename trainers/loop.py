"""``fit``: the training loop every trial runs, readable top to bottom.

Plain PyTorch: no Ray, no MLflow. A sweep observes it through ``on_epoch_end`` and resumes it
from a checkpoint; ``python -m trainers`` runs it alone.

Honest results: every epoch is measured on the validation split carved from the training set
(``val_*``, see ``trainers.data``); the test set is evaluated once, after the last epoch, and
its metrics appear only in that epoch's metrics (``FINAL_METRICS``). Anything chosen by
looking at epochs (a sweep's objective, early stopping, the best epoch) is therefore chosen on
validation data. Deviation: the AMP official script reports the best test accuracy over
epochs, a selection on the test set; ``test_at_best_val`` reports the test metrics of the
best-validation epoch instead. The metric names are declared in ``trainers.metrics``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from trainers import data as data_lib
from trainers import models, perturbations
from trainers.attacks import pgd
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.metrics import FINAL_METRICS
from trainers.precision import LossScaler, autocast
from trainers.spec import TrainSpec

Status = Literal["finished", "diverged", "stopped"]
#: Called after every epoch with that epoch's metrics and a function that writes a
#: checkpoint into a directory; returning True asks the loop to stop early.
EpochCallback = Callable[[dict[str, float], Callable[[str | Path], Path]], bool | None]

#: Examples in the fixed batch the Hessian diagnostic is measured on.
HESSIAN_BATCH = 256

CHECKPOINT_FORMAT = 2  # 2: validation metrics per epoch, test metrics once, best-val state
# Keys that may differ between a checkpoint's spec and the spec resuming it.
_RESUMABLE_CHANGES = {"epochs", "provenance", "device", "num_threads"}


@dataclass
class FitResult:
    """How a run ended and what it measured.

    ``final`` is the last epoch's metrics: with the ``FINAL_METRICS`` (test set) when the run
    trained all its epochs, without them when it diverged or was stopped early.
    """

    status: Status
    message: str
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(spec: TrainSpec, t: float) -> float:
    """LR multiplier at fractional epoch ``t`` (warm-up, then cosine / multistep / constant)."""
    s, warm = spec.schedule, spec.schedule.warmup_epochs
    if warm and t < warm:
        return t / warm
    if s.name == "cosine":
        span = max(spec.epochs - warm, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min((t - warm) / span, 1.0)))
    if s.name == "multistep":
        return s.gamma ** sum(t >= m for m in s.milestones)
    return 1.0


def _set_determinism(spec: TrainSpec) -> None:
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    torch.manual_seed(spec.seed)
    if spec.deterministic:
        # cuBLAS needs this before the first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Only on a change: the setter imports torch's compiler stack (~1.5 s), a cost each new
    # trial worker would pay although the default (off) is already in place.
    if (
        torch.are_deterministic_algorithms_enabled() != spec.deterministic
        or torch.is_deterministic_algorithms_warn_only_enabled()
    ):
        torch.use_deterministic_algorithms(spec.deterministic, warn_only=False)
    torch.backends.cudnn.benchmark = not spec.deterministic
    # fp32 means fp32: no TF32 tensor-core rounding in convolutions and matmuls (PyTorch
    # allows it for cuDNN convolutions by default), as the papers' fp32 runs computed.
    tf32 = spec.precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def _spec_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = (set(a) | set(b)) - _RESUMABLE_CHANGES
    return sorted(k for k in keys if a.get(k) != b.get(k))


def fit(
    spec: TrainSpec, *, on_epoch_end: EpochCallback | None = None, resume: str | Path | None = None
) -> FitResult:
    """Train ``spec`` and return how it ended.

    Args:
        spec: the run.
        on_epoch_end: called after every epoch with its metrics (``EPOCH_METRICS``; the last
            epoch adds ``FINAL_METRICS``) and a ``save(directory)`` function; returning True
            stops the run.
        resume: a checkpoint file or directory written by this loop; training continues after
            its epoch and, on CPU, ends with weights (and metrics, best-validation state
            included) bit-identical to an uninterrupted run.

    A non-finite loss ends the run with status ``diverged`` instead of raising.
    """
    data = spec.data
    if spec.test_at_best_val and (
        data.num_val == 0 or (data.num_val is None and data.val_fraction == 0)
    ):
        raise ValueError(
            "test_at_best_val needs a validation split (data.val_fraction > 0 or data.num_val"
            f" > 0), but got val_fraction={data.val_fraction}, num_val={data.num_val}"
        )
    if spec.adversarial is not None and spec.adversarial.autoattack:
        # Before any data is read or any epoch trained: only datasets with a per-channel
        # mean/std are images whose [0, 1] pixels AutoAttack can attack.
        if data_lib.DATASETS.get(data.name).mean is None:
            images = [n for n in data_lib.DATASETS.names() if data_lib.DATASETS.get(n).mean]
            raise ValueError(
                f"adversarial.autoattack needs an image dataset ({', '.join(images)}) as it"
                f" attacks [0, 1] pixels, but got data.name={data.name!r}"
            )
    device = resolve_device(spec.device)
    _set_determinism(spec)
    bundle = data_lib.build(
        spec.data,
        batch_size=spec.batch_size,
        device=device,
        seed=spec.seed,
        test_batch_size=spec.eval_batch_size,
    )
    model = models.build(
        spec.model.name, num_classes=bundle.num_classes, in_shape=bundle.in_shape, **spec.model.args
    ).to(device)
    memory_format = torch.preserve_format
    if spec.channels_last and len(bundle.in_shape) == 3:
        memory_format = torch.channels_last
        model = model.to(memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    o = spec.optim
    optimizer = torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    )
    steps_per_epoch = len(bundle.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(spec, step / steps_per_epoch)
    )
    scaler = LossScaler(device) if spec.precision == "fp16" else None
    perturbation = perturbations.from_spec(spec.perturbation, model)
    erm = perturbations.build("erm", model)
    adv = spec.adversarial
    mean = torch.tensor(bundle.mean) if bundle.mean is not None else None
    std = torch.tensor(bundle.std) if bundle.std is not None else None

    history: list[dict[str, float]] = []
    start_epoch = 0
    # With test_at_best_val: the first epoch of highest val_acc, that val_acc, and a copy of
    # the model's state_dict (weights and buffers) after that epoch.
    best: dict[str, Any] | None = None
    if resume is not None:
        state = load_checkpoint(resume)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {str(resume)!r} has format {state.get('format')}, but this loop"
                f" resumes format {CHECKPOINT_FORMAT} only"
            )
        diff = _spec_diff(state["spec"], spec.model_dump(mode="json"))
        if diff:
            raise ValueError(
                f"checkpoint {str(resume)!r} was written by a different spec "
                f"(fields {', '.join(diff)} differ)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start_epoch, history = state["epoch"], list(state["history"])
        if start_epoch > spec.epochs:
            # Nothing to train, and the history would report an epoch past the spec's end.
            raise ValueError(
                f"checkpoint {str(resume)!r} is at epoch {start_epoch}, past epochs "
                f"{spec.epochs}; resume it with epochs >= {start_epoch}"
            )
        if start_epoch < spec.epochs:
            # Resumed with more epochs (``--epochs``): the old last epoch is no longer last.
            history = [{k: v for k, v in m.items() if k not in FINAL_METRICS} for m in history]
        if state.get("best_val") is not None:
            best = dict(state["best_val"])
            best["state"] = {k: v.to(device) for k, v in best["state"].items()}

    def save(path: str | Path, epoch: int) -> Path:
        return save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "spec": spec.model_dump(mode="json"),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": history,
                "best_val": best,
            },
        )

    def measure(net: nn.Module, loader: Any, split: str, examples: int | None) -> dict[str, float]:
        """``{split}_loss`` and ``{split}_acc`` of ``net`` on ``loader``, plus
        ``{split}_robust_acc`` (on its first ``examples``) with adversarial training."""
        loss, acc = evaluate(net, loader, spec, device, memory_format)
        out = {f"{split}_loss": loss, f"{split}_acc": acc}
        if adv is not None:
            out[f"{split}_robust_acc"] = robust_accuracy(
                net, loader, spec, device, memory_format, mean, std, examples=examples
            )
        return out

    def at_best_val(snapshot: dict[str, Any], last: dict[str, float]) -> dict[str, float]:
        """``best_val_epoch`` and the test metrics of its weights (``test_*_at_best_val``)."""
        if snapshot["epoch"] == last["epoch"]:
            # The same weights: reuse the numbers rather than draw another PGD random start.
            test = {k: v for k, v in last.items() if k.startswith("test_")}
        else:
            # A copy, so the model (about to be checkpointed) is never touched.
            net = copy.deepcopy(model)
            net.load_state_dict(snapshot["state"])
            test = measure(net, bundle.test, "test", None)
            del net
        at_best = {f"{k}_at_best_val": v for k, v in test.items()}
        return {"best_val_epoch": snapshot["epoch"], **at_best}

    for epoch in range(start_epoch, spec.epochs):
        t0 = time.perf_counter()
        model.train()
        bundle.train.set_epoch(epoch)
        method = erm if epoch < spec.perturbation.warmup_epochs else perturbation
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, passes = 0, 0
        for step, (x, y) in enumerate(bundle.train):
            x = x.contiguous(memory_format=memory_format)
            if adv is not None:
                with autocast(spec.precision, device):
                    x = pgd(
                        model,
                        x,
                        y,
                        eps=adv.eps,
                        step_size=adv.step_size,
                        steps=adv.steps,
                        mean=mean,
                        std=std,
                    )
            first = True

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                nonlocal first, loss_sum, correct, passes
                optimizer.zero_grad(set_to_none=True)
                with autocast(spec.precision, device):
                    out = model(x)
                    loss = F.cross_entropy(out, y)
                if scaler is not None:
                    scaler.backward(loss, params)
                else:
                    loss.backward()
                if o.grad_clip_norm is not None:
                    nn.utils.clip_grad_norm_(params, o.grad_clip_norm, foreach=True)
                if first:  # train metrics at the unperturbed weights
                    first = False
                    loss_sum += loss.detach().float() * len(y)
                    correct += (out.argmax(1) == y).sum()
                passes += 1
                return loss.detach()

            # fp16: a step that overflowed is skipped, and its perturbed passes (at NaN
            # weights) must not leave their BatchNorm statistics behind (``_base``).
            method.backward(closure, found_inf=scaler.found_inf if scaler is not None else None)
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
            scheduler.step()
            seen += len(y)
            # One host sync every 20 steps is enough to stop a diverged run early.
            if step % 20 == 19 and not torch.isfinite(loss_sum):
                break
        train_loss = float(loss_sum) / max(seen, 1)
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            message = (
                f"loss became {train_loss} in epoch {epoch + 1}; lower optim.lr or "
                f"perturbation.radius"
            )
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "diverged": 1.0})
            return FitResult("diverged", message, history)
        train_acc = float(correct) / max(seen, 1)
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "closure_passes": passes,
            "train_seconds": train_seconds,
            "images_per_s": seen / train_seconds,
            "diverged": 0.0,
        }
        if bundle.val is not None:
            metrics.update(measure(model, bundle.val, "val", adv.eval_examples if adv else None))
            metrics["gen_gap"] = train_acc - metrics["val_acc"]
            # The best epoch by robust accuracy under PGD (as the AWP official code picks it),
            # else by accuracy; the key keeps its old name in checkpoints.
            key = "val_robust_acc" if "val_robust_acc" in metrics else "val_acc"
            if spec.test_at_best_val and (best is None or metrics[key] > best["val_acc"]):
                state_now = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"epoch": epoch + 1, "val_acc": metrics[key], "state": state_now}
        if epoch + 1 == spec.epochs:  # the test set, once
            metrics.update(measure(model, bundle.test, "test", None))
            if best is not None:
                metrics.update(at_best_val(best, metrics))
            if adv is not None and adv.autoattack:
                # After at_best_val, which copies this epoch's test_* metrics: AutoAttack is
                # measured on the final weights only.
                from trainers.attacks import autoattack_accuracy

                metrics["test_autoattack_acc"] = autoattack_accuracy(
                    model,
                    bundle.test,
                    eps=adv.eps,
                    num_classes=bundle.num_classes,
                    mean=bundle.mean,
                    std=bundle.std,
                    seed=spec.seed,
                    examples=adv.autoattack_examples,
                )
            metrics["train_seconds_total"] = train_seconds + sum(
                m.get("train_seconds", 0.0) for m in history
            )
            metrics["closure_passes_total"] = passes + sum(
                m.get("closure_passes", 0) for m in history
            )
            if spec.hessian_lmax:
                metrics["diag.hessian_lmax"] = _hessian_lmax(model, bundle, memory_format)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        history.append(metrics)
        if on_epoch_end is not None and on_epoch_end(
            metrics, lambda path, e=epoch + 1: save(path, e)
        ):
            return FitResult("stopped", f"stopped after epoch {epoch + 1}", history)
    return FitResult("finished", f"trained {spec.epochs} epochs", history)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    spec: TrainSpec,
    device: torch.device,
    memory_format: torch.memory_format,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``loader`` in eval mode."""
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in loader:
        with autocast(spec.precision, device):
            out = model(x.contiguous(memory_format=memory_format))
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    return float(loss) / max(n, 1), float(correct) / max(n, 1)


def robust_accuracy(
    model: nn.Module,
    loader: Any,
    spec: TrainSpec,
    device: torch.device,
    memory_format: torch.memory_format,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    *,
    examples: int | None = None,
) -> float:
    """PGD-``eval_steps`` accuracy (eval mode) on the first ``examples`` of ``loader``.

    ``examples`` None attacks every example. The attack and the forward pass run in fp32
    unless ``adversarial.eval_precision`` is ``train`` (the AWP official evaluation is fp32).
    """
    adv = spec.adversarial
    if adv is None:
        raise ValueError("robust_accuracy needs spec.adversarial (PGD) to be set, but got None")
    precision = spec.precision if adv.eval_precision == "train" else "fp32"
    model.eval()
    correct, n = 0, 0
    for x, y in loader:
        if examples is not None:
            if n >= examples:
                break
            x, y = x[: examples - n], y[: examples - n]  # exactly ``examples``, not whole batches
        x = x.contiguous(memory_format=memory_format)
        with autocast(precision, device):
            x_adv = pgd(
                model,
                x,
                y,
                eps=adv.eps,
                step_size=adv.step_size,
                steps=adv.eval_steps,
                mean=mean,
                std=std,
            )
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
        n += len(y)
    return correct / max(n, 1)


def _hessian_lmax(model: nn.Module, bundle: Any, memory_format: torch.memory_format) -> float:
    """The top Hessian eigenvalue at the final weights on the first ``HESSIAN_BATCH``
    validation examples (the test set when there is no validation split), in fp32."""
    from trainers.diagnostics import hessian_top_eigenvalue

    loader = bundle.val if bundle.val is not None else bundle.test
    xs, ys, n = [], [], 0
    for x, y in loader:  # fixed order: the same batch for every run of the same data
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= HESSIAN_BATCH:
            break
    x = torch.cat(xs)[:HESSIAN_BATCH].float().contiguous(memory_format=memory_format)
    y = torch.cat(ys)[:HESSIAN_BATCH]
    return hessian_top_eigenvalue(model, x, y)
