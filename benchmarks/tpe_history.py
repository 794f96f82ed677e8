"""Optuna's TPE, the service's (the same suggestions, kept between them) and TPE over a
bounded history: cost per suggestion and search.

The service's default TPE (``sweeps/incremental_tpe.py``) is Optuna's, suggestion for
suggestion, with the split and the parameter arrays kept from one suggestion to the next
instead of rebuilt from every trial. ``searcher.max_history`` (``sweeps/bounded_tpe.py``)
builds TPE's densities from the last ``max_history`` trials and the 25 best before them, so a
suggestion's cost stops growing with the sweep. This script measures what each buys and what
it costs, with Optuna alone (no Ray,
no training): the service's TPE settings (multivariate, constant liar, 4 start-up trials), 4
trials asked at once before they are told (as 4 concurrent Tune trials), on a noisy synthetic
objective over the AMP space's three parameters (radius and inner LR on a log scale, inner
steps 1-3; its optimum at radius 0.05, inner LR 0.1, 1 step; Gaussian noise of sd 0.3, about
a tenth of the spread of the values a random search sees).

Per arm (Optuna's ``TPESampler``; the service's ``IncrementalTPESampler``, whose best and
last values must equal Optuna's; ``BoundedTPESampler`` with ``--max-history``), per seed:

- milliseconds per ask + tell, averaged over 100 trials from each of three study sizes
  (a third of ``--trials``, two thirds, all);
- the best value found in ``--trials`` trials, and the mean value of the last 500 (how much
  the sampler exploits once it has a model: the two arms' suggestions are identical up to
  ``max_history + 25`` trials, so the difference is the bound's).

    python benchmarks/tpe_history.py                  # 3 seeds, 3000 trials (~6 min on 2 cores)
    python benchmarks/tpe_history.py --quick          # 1 seed, 600 trials, bound 250 (the test's)

Prints a markdown section and appends it to ``benchmarks/RESULTS.md`` (``--results``
elsewhere) with the date (UTC), the machine, the code state and the exact command, unless
``--no-record``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import ROOT, code_state, cpu_model  # noqa: E402
from sweep_scale import append, fmt_load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CONCURRENT = 4  # trials asked before any is told
TIMED = 100  # trials timed per size (with 20, identical work read 15.6 ms in one arm, 8.4)
LAST = 500  # the latest trials whose mean value is reported


def objective(rng: random.Random) -> Callable[[Any], float]:
    """Noisy, with one optimum (value 0 less 0.1 per inner step) in the AMP space."""

    def f(trial: Any) -> float:
        radius = trial.suggest_float("perturbation.radius", 1e-3, 1.0, log=True)
        lr = trial.suggest_float("perturbation.inner_lr", 1e-3, 1.0, log=True)
        steps = trial.suggest_int("perturbation.inner_steps", 1, 3)
        return (
            -(math.log(radius / 0.05) ** 2)
            - math.log(lr / 0.1) ** 2
            - 0.1 * steps
            + rng.gauss(0.0, 0.3)
        )

    return f


def sampler(arm: str, seed: int, max_history: int) -> Any:
    """The service's TPE (``sweeps.searchers.tpe_sampler``), its history bounded or not, or
    Optuna's ``TPESampler`` with the same settings."""
    import optuna

    from sweeps.searchers import tpe_sampler, tpe_settings
    from sweeps.spec import SearcherSpec

    spec = SearcherSpec(seed=seed, max_history=max_history if arm == "bounded" else None)
    if arm == "optuna":
        return optuna.samplers.TPESampler(**tpe_settings(spec))
    return tpe_sampler(spec)


def run(arm: str, seed: int, trials: int, at: Sequence[int], max_history: int) -> dict[str, Any]:
    """One study: ms per ask + tell at each size in ``at``, best value, mean of the last."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler(arm, seed, max_history))
    f = objective(random.Random(seed))
    ms: dict[int, float] = {}
    done = 0  # counted here: Study.trials deep-copies every trial on each read

    def step() -> None:
        nonlocal done
        asked = [study.ask() for _ in range(CONCURRENT)]
        for trial in asked:
            study.tell(trial, f(trial))
        done += len(asked)

    for size in sorted(at):
        while done + TIMED < size:
            step()
        gc.collect()  # the same heap state in both arms before the timed trials
        t0, start = time.perf_counter(), done
        while done < start + TIMED:
            step()
        ms[size] = (time.perf_counter() - t0) * 1000 / (done - start)
    while done < trials:
        step()
    values = [t.value for t in study.get_trials(deepcopy=False)]
    return {"ms": ms, "best": max(values), "last": statistics.mean(values[-LAST:])}


def table(runs: dict[str, list[dict[str, Any]]], at: Sequence[int], max_history: int) -> str:
    labels = {
        "optuna": "Optuna's TPE",
        "service": "the service's (incremental)",
        "bounded": f"bounded, max_history {max_history}",
    }
    head = (
        "| arm | "
        + " | ".join(f"ms per trial at {n}" for n in at)
        + f" | best value per seed | mean of the last {LAST} per seed (mean) |"
    )
    lines = [head, "|---|" + "---:|" * (len(at) + 2)]
    for arm, seeds in runs.items():
        ms = [statistics.mean(r["ms"][n] for r in seeds) for n in at]
        best = ", ".join(f"{r['best']:.3f}" for r in seeds)
        last = [r["last"] for r in seeds]
        lines.append(
            f"| {labels[arm]} | "
            + " | ".join(f"{v:.1f}" for v in ms)
            + f" | {best} | {', '.join(f'{v:.2f}' for v in last)} ({statistics.mean(last):.2f}) |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-history", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="1 seed, 600 trials, bound 250")
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.seeds, args.max_history = 600, 1, 250
    if args.trials < LAST or args.seeds < 1:
        p.error(f"--trials must be >= {LAST} and --seeds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run both arms over the seeds; print and append the table."""
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/tpe_history.py", *argv]
    )
    when = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()
    at = [args.trials // 3, 2 * args.trials // 3, args.trials]  # distinct: --trials >= 500
    runs: dict[str, list[dict[str, Any]]] = {"optuna": [], "service": [], "bounded": []}
    for seed in range(args.seeds):
        for arm in runs if seed % 2 == 0 else reversed(list(runs)):
            runs[arm].append(run(arm, seed, args.trials, at, args.max_history))
            print(f"[tpe_history] seed {seed} {arm}: {runs[arm][-1]}", file=sys.stderr)
    quick = " (quick: one seed, not a measurement)" if args.quick else ""
    section = (
        "## tpe_history: Optuna's TPE, the service's, and a bounded history — "
        f"{when:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}; optuna "
        f"{version('optuna')}, Python {platform.python_version()}\n"
        f"- code: {code_state()}\n"
        f"- command: `{command}`{quick}\n"
        f"- load average before: {fmt_load(load)}, after: {fmt_load(os.getloadavg())}\n"
        f"- {args.trials} trials per study, seeds 0-{args.seeds - 1}, {CONCURRENT} asked at "
        "once; TPE multivariate, constant liar, 4 start-up trials; objective: the AMP space's "
        "radius, inner LR (log) and inner steps, one optimum, Gaussian noise sd 0.3 (the "
        "script's doc). ms per trial: ask + tell, mean of "
        f"{TIMED} trials at that study size.\n\n"
        f"{table(runs, at, args.max_history)}\n"
    )
    print(section)
    if not args.no_record:
        append(args.results, section)
    return runs


if __name__ == "__main__":
    main()
