"""Step cost: the wall-clock price of one training step under each perturbation, side by side.

One step is what ``trainers/loop.py`` runs per batch: ``perturbation.backward(closure)`` (the
method's closure calls, each zero-grad + forward + backward) and then ``optimizer.step()`` (SGD
with momentum). Timed here, in one run: ERM, SAM (radius 0.05), AMP with K = 1, 2, 3 inner steps
(radius 0.5, inner_lr 1) and AWP (radius 0.01, inner_steps 1, inner_lr 0.01), on PreActResNet18
at CIFAR-10 shape (3x32x32, 10 classes) with a fixed synthetic batch.

A method that makes n closure calls should cost about n ERM steps; the report gives each
method's median relative to ERM's and whether it lies in the band [0.9, 1.05]·n. Above the band
means the perturbation's own bookkeeping (snapshot, foreach arithmetic, restore) is not cheap
next to a forward-backward pass.

AWP's batch is plain data here, with no PGD: this measures the weight perturbation's own cost,
not that of the adversarial training it is normally wrapped in (PGD-10 costs ~10 more passes).

Fairness, after airbench (KellerJordan/cifar10-airbench): every method gets its own model copy
with identical initial weights, its own optimizer and the same batch, and is warmed up before
timing. Timed steps are interleaved: each round times every method once, in an order rotated by
one each round, so a drift in machine load hits all methods alike rather than whichever ran
last. On CUDA each step is timed with CUDA events between synchronisations; on CPU with
``time.perf_counter`` (torch's default thread count is left alone). Reported: median (the
ratio uses medians, robust to a stray slow step), mean ± sample std.

    python benchmarks/step_cost.py                   # CPU defaults: batch 128, 5 rounds
    python benchmarks/step_cost.py --device cuda     # batch 512, 20 rounds, CUDA events
    python benchmarks/step_cost.py --quick           # seconds: small_cnn, batch 8 (the test's)

The table is printed and appended to ``benchmarks/RESULTS.md`` (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainers import models, perturbations
from trainers.loop import resolve_device
from trainers.precision import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import cpu_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# (label, perturbation kind, hyperparameters): the paper defaults named in docs/algorithms.md.
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("ERM", "erm", {}),
    ("SAM", "sam", {"radius": 0.05}),
    ("AMP K=1", "amp", {"radius": 0.5, "inner_steps": 1, "inner_lr": 1.0}),
    ("AMP K=2", "amp", {"radius": 0.5, "inner_steps": 2, "inner_lr": 1.0}),
    ("AMP K=3", "amp", {"radius": 0.5, "inner_steps": 3, "inner_lr": 1.0}),
    ("AWP", "awp", {"radius": 0.01, "inner_steps": 1, "inner_lr": 0.01}),
]
#: A method making n closure calls should cost between BAND[0]·n and BAND[1]·n ERM steps.
BAND = (0.9, 1.05)

# The training loop's default optimizer (``OptimSpec``): SGD, lr 0.1 per batch, momentum 0.9,
# L2 coefficient 5e-4. Its values do not change what a step costs.
OPTIM = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}

IN_SHAPE = (3, 32, 32)  # CIFAR-10: channels, height, width
NUM_CLASSES = 10

# Defaults per device: (batch, warm-up steps per method, timed rounds). On 2 CPU cores one
# PreActResNet18 ERM step at batch 128 takes ~2.6 s and a round ~14 of them (1+2+2+3+4+2
# closure calls), so 1 warm-up + 5 rounds took 4 min 40 s in all (2026-11-23, AMD EPYC).
DEFAULTS = {"cpu": (128, 1, 5), "cuda": (512, 5, 20)}
QUICK = {"model": "small_cnn", "batch": 8, "warmup": 1, "repeats": 2}


@dataclass
class Method:
    """One method's model copy, optimizer, perturbation, closure and timings."""

    label: str
    perturbation: perturbations.Perturbation
    optimizer: torch.optim.Optimizer
    closure: Callable[[], torch.Tensor]
    calls: list[int]  # a one-element counter the closure increments
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    loss: float = math.nan

    def step(self) -> None:
        """One training step, exactly as ``trainers/loop.py`` runs it (fp32/bf16 path)."""
        self.perturbation.backward(self.closure)
        self.optimizer.step()


def build_method(
    label: str,
    kind: str,
    hparams: dict[str, Any],
    base: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    device: torch.device,
) -> Method:
    model = copy.deepcopy(base)  # identical initial weights and buffers for every method
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, **OPTIM)
    calls = [0]

    # The training loop's closure minus its train metrics; clipping is off by default there.
    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        calls[0] += 1
        return loss.detach()

    perturbation = perturbations.build(kind, model, **hparams)
    return Method(label, perturbation, optimizer, closure, calls)


def time_step(method: Method, device: torch.device) -> tuple[float, float]:
    """Wall seconds of one step and the process CPU seconds it used (CPU only, else NaN)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)  # nothing queued from before may leak into this step
        start.record()
        method.step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3, math.nan  # elapsed_time is in milliseconds
    c0, t0 = time.process_time(), time.perf_counter()
    method.step()
    return time.perf_counter() - t0, time.process_time() - c0


def machine(device: torch.device) -> str:
    text = f"CPU {cpu_model()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, torch {torch.__version__}, Python {platform.python_version()}"


def run(args: argparse.Namespace, device: torch.device) -> list[Method]:
    torch.manual_seed(args.seed)
    base = models.build(args.model, num_classes=NUM_CLASSES, in_shape=IN_SHAPE).to(device)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, *IN_SHAPE, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)
    methods = [build_method(*m, base, x, y, args.precision, device) for m in METHODS]
    del base

    n = len(methods)
    for r in range(args.warmup + args.repeats):
        # Rotate the order by one each round so that load drift falls on every method alike.
        for method in methods[r % n :] + methods[: r % n]:
            method.calls[0] = 0
            seconds, cpu = time_step(method, device)
            if r >= args.warmup:
                method.seconds.append(seconds)
                method.cpu_seconds.append(cpu)
            # The counted calls must be the ones the perturbation declares.
            if method.calls[0] != method.perturbation.closure_calls:
                raise RuntimeError(
                    f"{method.label} made {method.calls[0]} closure calls, but declares "
                    f"closure_calls={method.perturbation.closure_calls}"
                )
        print(f"round {r + 1}/{args.warmup + args.repeats} done", file=sys.stderr)
    for method in methods:
        method.loss = float(method.closure())  # a diverged copy would have timed NaN arithmetic
    return methods


def table(methods: list[Method]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and its rows as dicts (what the test reads)."""
    erm = statistics.median(methods[0].seconds)
    rows: list[dict[str, Any]] = []
    lines = [
        "| method | closure calls | median s | mean ± std s | × ERM (median) | target band "
        "| in band | × ERM per call |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for i, m in enumerate(methods):
        calls = m.perturbation.closure_calls
        med = statistics.median(m.seconds)
        mean = statistics.fmean(m.seconds)
        std = statistics.stdev(m.seconds) if len(m.seconds) > 1 else 0.0
        ratio = med / erm
        lo, hi = BAND[0] * calls, BAND[1] * calls
        if i == 0:  # the baseline: its ratio is 1 by definition
            band, verdict = "—", "—"
        else:
            band = f"[{lo:.2f}, {hi:.2f}]"
            verdict = "yes" if lo <= ratio <= hi else ("above" if ratio > hi else "below")
        rows.append(
            {
                "method": m.label,
                "closure_calls": calls,
                "median_s": med,
                "mean_s": mean,
                "std_s": std,
                "ratio": ratio,
                "band": (lo, hi),
                "in_band": verdict,
            }
        )
        lines.append(
            f"| {m.label} | {calls} | {med:.4f} | {mean:.4f} ± {std:.4f} | {ratio:.3f} | {band} "
            f"| {verdict} | {ratio / calls:.3f} |"
        )
    return "\n".join(lines), rows


INTRO = """# Benchmark results

Measurements appended by the scripts in `benchmarks/`, newest last. Each section names its date
(UTC), the machine, the exact command and any load seen on the machine; the numbers are written
by the scripts and never edited by hand.

- `step_cost.py`: seconds of one full training step (the perturbation's closure calls plus the
  SGD-momentum step) for ERM, SAM, AMP with K = 1, 2, 3 and AWP on PreActResNet18 at CIFAR-10
  shape with a synthetic batch; each method's median relative to ERM's, against the band
  [0.9, 1.05] × its closure calls (a method of n forward-backward passes should cost n ERM
  steps). Methods are interleaved round by round in a rotating order.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch", type=int, help="examples per step (default 128 CPU, 512 GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per method (default 1 CPU, 5 GPU)")
    p.add_argument("--repeats", type=int, help="timed rounds (default 5 CPU, 20 GPU)")
    p.add_argument("--model", help="a trainers.models name (default preact_resnet18)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (small_cnn)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.model = args.model or "preact_resnet18"
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark, print and append the table; return its rows."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    batch, warmup, repeats = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    args.batch = batch if args.batch is None else args.batch
    args.warmup = warmup if args.warmup is None else args.warmup
    args.repeats = repeats if args.repeats is None else args.repeats
    if args.batch < 1 or args.warmup < 0 or args.repeats < 1:
        raise SystemExit(
            f"need batch >= 1, warmup >= 0, repeats >= 1, but got "
            f"{args.batch=}, {args.warmup=}, {args.repeats=}"
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training loop sets it when not deterministic

    command = shlex.join(sys.orig_argv if argv is None else ["benchmarks/step_cost.py", *argv])
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    methods = run(args, device)
    load_after = os.getloadavg()
    text, rows = table(methods)

    notes = [
        "AWP: plain batch, no PGD; this is the weight perturbation's own cost, not adversarial "
        "training's.",
    ]
    cores = os.cpu_count() or 1
    busy = load_before[0] > 0.5 * cores
    if device.type == "cpu":
        # Threads descheduled by other processes show up as CPU time well below threads × wall.
        threads = torch.get_num_threads()
        wall = sum(sum(m.seconds) for m in methods)
        share = sum(sum(m.cpu_seconds) for m in methods) / (wall * threads)
        busy = busy or share < 0.8
        notes.append(
            f"Process CPU time over the timed steps: {share:.0%} of {threads} threads × wall "
            "time (~100% on an otherwise idle machine)."
        )
    notes.append(
        f"Load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {'/'.join(f'{v:.2f}' for v in load_after)} (after includes this run's "
        f"threads; {cores} cores)."
    )
    if busy:
        notes.append(
            "**Other work competed for the machine during this run: the timings and ratios are "
            "contaminated by it; rerun on an idle machine before drawing conclusions.**"
        )
    bad = [m.label for m in methods if not math.isfinite(m.loss)]
    if bad:
        notes.append(f"Non-finite loss after timing for {', '.join(bad)}: timings suspect.")

    header = (
        f"## step_cost — {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: {machine(device)}\n"
        f"- device: {device}; model {args.model} at {IN_SHAPE}, {NUM_CLASSES} classes; batch "
        f"{args.batch}; precision {args.precision}; warm-up {args.warmup} step(s) per method; "
        f"{args.repeats} timed rounds (interleaved, rotating order); timer "
        f"{'CUDA events' if device.type == 'cuda' else 'time.perf_counter'}\n"
        f"- command: `{command}`\n" + "".join(f"- {n}\n" for n in notes)
    )
    section = f"{header}\n{text}\n"
    print(section)
    if not args.results.exists():
        args.results.write_text(INTRO)
    with args.results.open("a") as f:
        f.write(f"\n{section}")
    return rows


if __name__ == "__main__":
    main()
