"""Sweep overhead and search quality per wall second, measured through the project's own API.

Every sweep here is a ``SweepSpec`` run by ``sweeps.runner.run_sweep`` on a local Ray started by
this script, with Tune results and an MLflow SQLite database in a temporary directory (nothing
is written into the repository except the appended results). All timings are read back from
what the sweep itself recorded: the MLflow child runs (start/end times, per-epoch metrics with
the driver's timestamps) and Tune's per-trial ``result.json`` (the worker's ``time_this_iter_s``).

Part 1, ``overhead``: 8 trials of ~20 s of training each (MNIST-1D, cnn1d, AMP with one inner
step so every trial costs the same; FIFO scheduler and random sampler, so no trial stops early),
1 CPU per trial. With S slots (CPUs / 1, or ``--slots``)::

    overhead = 1 - sum(training seconds of all trials) / (wall seconds * S)

where a trial's training seconds are the sum over its epochs of ``epoch_seconds`` (the loop's
timer around train + evaluation of one epoch, before the epoch's checkpoint and report); the
same ratio with ``train_seconds`` (training only, no evaluation) is reported too. The wall time
is measured twice: including Ray start-up (this script's ``ray.init``, with the arguments
``run_sweep`` would use) and excluding it (``run_sweep`` alone; it reuses the initialised Ray).
The MLflow database and the Optuna study database beside it are created, and the datasets
generated into the on-disk cache (unless ``--cold-cache``), before timing: one-offs per
database and machine, reported separately. Before anything else a full run also times what
each new trial worker imports (``WORKER_IMPORTS``: Ray, Tune, torch, the trainers and
``torch._dynamo``) in a fresh interpreter: a floor under both arms on this machine.
The slot-seconds that are not training are then split by where they went, from timestamps:
``run_sweep``'s own set-up before ``Tuner.fit``, Tune's set-up and the first workers' start-up
until the first trial starts, gaps between trials in a slot (actor reuse), set-up inside a trial
before its first epoch (imports in a new worker, data generation, model; new and reused workers
apart, told by the worker pid in Tune's results), per-epoch checkpoint + report in the worker,
the round trip through the driver per batch of results (result processing, callbacks, next
``train`` call; the service lets Tune hand over a second of short epochs at once,
``sweeps.ray_internals.buffered_results``), closing a trial, the tail (idle slots once no
trial is left to start) and the teardown.
The driver's own time in the MLflow tracker's hooks, Tune's experiment snapshots and the Optuna
searcher is measured directly by wrapping those methods in this process (the driver), which also
records when the driver saw each trial start and complete. The same trials then run as a
plain Ray Tune script would run them (the service's trainable and sampler, FIFO, actor reuse;
no MLflow, no result batches), timed by a callback and split the same way, side by side: what
Ray Tune and torch cost on their own (worker start-up, imports, per-result round trips) is
the floor under the service's number.

Part 2, ``search``: the same trial budget for ASHA + TPE and for FIFO + random search on the
``amp`` space (MNIST-1D, cnn1d, 15 epochs), one seed each. Reported per arm: total wall time,
the best test accuracy (final epoch of a finished full-length trial, as the sweep ranks them),
and the wall time from the ``run_sweep`` call until the target accuracy is reached, in two
senses: (a) the first full-length trial whose final-epoch ``val_acc`` >= target finishes
(its MLflow child run's end time); (b) any trial reports ``val_acc`` >= target at any epoch
(the MLflow timestamp of that metric; this counts trials that ASHA later stops).

    python benchmarks/sweep_overhead.py                     # --part all: ~5 min on 2 idle cores
    python benchmarks/sweep_overhead.py --part overhead
    python benchmarks/sweep_overhead.py --quick             # seconds-long trials (the test's)
    python benchmarks/sweep_overhead.py --part overhead --trial-seconds 30 --slots 2
        # 30-s trials on any machine (epochs calibrated here first), 2 slots whatever its cores

Each part prints a markdown section and appends it to ``benchmarks/RESULTS.md`` (``--results``
elsewhere) with the date (UTC), the machine, the load averages and the exact command.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import ROOT, code_state, cpu_model  # noqa: E402
from sweep_scale import plain_tune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
INTRO = (
    "# Benchmark results\n\n"
    "Measurements appended by the scripts in `benchmarks/`, newest last; never edited by hand.\n"
)

# The base TrainSpec of every sweep: the project's MNIST-1D quickstart (examples/quickstart.yaml).
TRAIN = {
    "model": {"name": "cnn1d"},
    "data": {"name": "mnist1d", "num_train": 4000, "num_test": 1000},
    "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
    "perturbation": {"kind": "amp"},
    "batch_size": 128,
    "seed": 0,
    "device": "cpu",
}
RADIUS = [0.002, 0.2]  # the quickstart's AMP radius range for this 5k-parameter CNN

# Part 1: one AMP inner step (2 forward-backward passes per batch) in every trial, so all trials
# cost the same and 8 trials pack into 4 rounds of 2 slots. On this project's 2-core AMD EPYC
# machine one epoch of 4000 examples (train + evaluation) takes ~0.16 s with one thread when the
# machine is otherwise idle: 120 epochs ~ 20 s (more when other work shares the cores).
OVERHEAD = {"trials": 8, "epochs": 120, "num_train": 4000, "num_test": 1000}
# Part 2: 12 trials of 15 epochs per arm; the best configurations reach ~0.83 test accuracy at
# 15 epochs, poor ones (large radius, 3 inner steps) ~0.6-0.77.
SEARCH = {"trials": 12, "epochs": 15, "num_train": 4000, "num_test": 1000, "target": 0.82}
ASHA = {"name": "asha", "grace_period": 3, "reduction_factor": 3}  # rungs at epochs 3 and 9
# --quick: synthetic 1-D signals (cnn1d's input shape) skip MNIST-1D's generation and imports
# (scipy, matplotlib), which would dominate seconds-long trials.
QUICK_DATA = {"name": "synthetic", "shape": [1, 40], "num_classes": 10}
QUICK_OVERHEAD = {"trials": 2, "epochs": 3, "num_train": 256, "num_test": 128, "data": QUICK_DATA}
QUICK_SEARCH = {
    "trials": 2,
    "epochs": 2,
    "num_train": 256,
    "num_test": 128,
    "target": 0.05,
    "data": QUICK_DATA,
}
QUICK_ASHA = {"name": "asha", "grace_period": 1, "reduction_factor": 2}


# -- machine and load ----------------------------------------------------------------------------


def machine() -> str:
    import mlflow
    import optuna
    import ray
    import torch

    return (
        f"CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}; torch {torch.__version__}, "
        f"ray {ray.__version__}, optuna {optuna.__version__}, mlflow {mlflow.__version__}, "
        f"Python {platform.python_version()}"
    )


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


class LoadWatch:
    """Load averages before and after a block, and the highest 1-min load sampled during it."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.before: tuple[float, ...] = ()
        self.after: tuple[float, ...] = ()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, os.getloadavg()[0])

    def __enter__(self) -> LoadWatch:
        self.before = os.getloadavg()
        self.peak = self.before[0]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.after = os.getloadavg()
        self.peak = max(self.peak, self.after[0])

    def text(self) -> str:
        return (
            f"before {fmt_load(self.before)}, after {fmt_load(self.after)} (1/5/15 min), "
            f"highest 1-min sampled during {self.peak:.2f}"
        )


# -- running one sweep ---------------------------------------------------------------------------


def describe_data(cfg: dict[str, Any]) -> str:
    data = cfg.get("data", TRAIN["data"])
    name = {"mnist1d": "MNIST-1D"}.get(data["name"], data["name"])
    return f"{name} {cfg['num_train']}/{cfg['num_test']}"


def make_spec(
    name: str,
    tmp: Path,
    cfg: dict[str, Any],
    *,
    sampler: str,
    scheduler: dict[str, Any],
    ranges: dict[str, list[float]],
) -> tuple[Any, str]:
    """A validated SweepSpec for ``cfg`` writing only under ``tmp``, and its YAML text."""
    import yaml

    from sweeps.spec import SweepSpec, check_space

    train = {**TRAIN, "epochs": cfg["epochs"], "data": data_spec(cfg)}
    raw = {
        "name": name,
        "train": train,
        "space": {"name": "amp", "ranges": ranges},
        "searcher": {"sampler": sampler, "seed": 0, "n_startup_trials": 4},
        "scheduler": scheduler,
        "num_samples": cfg["trials"],
        "resources": {"cpu": 1, "gpu": 0},
        "metric": "val_acc",
        "mode": "max",
        "finalists": {"top_k": 0},  # the search's own overhead: no confirmation stage
        "max_concurrent": cfg.get("slots"),  # None: one trial per CPU
        "storage_path": str(tmp / "ray_results"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    spec = SweepSpec.model_validate(raw)
    check_space(spec)  # what load_spec checks besides the YAML itself
    return spec, yaml.safe_dump(raw, sort_keys=False)


# Driver-side functions timed in this process (the driver): (module, class, methods, label).
# Methods a class does not define itself are skipped, so a changed tracker still runs.
TIMED = [
    (
        "sweeps.tracking",
        "MLflowTracker",
        (
            "on_trial_start",
            "on_trial_restore",
            "on_trial_result",
            "on_trial_complete",
            "on_trial_error",
            "on_step_end",
            "on_experiment_end",
            "drain",
        ),
        "MLflowTracker",
    ),
    # The tracker's writes (in its background writer thread, if it has one).
    (
        "mlflow.tracking.client",
        "MlflowClient",
        ("create_run", "log_batch", "update_run", "set_terminated", "search_runs"),
        "MlflowClient",
    ),
    ("ray.tune", "Tuner", ("fit",), "Tuner"),
    (
        "ray.tune.execution.tune_controller",
        "TuneController",
        ("checkpoint",),
        "Tune experiment snapshot",
    ),
    (
        "ray.tune.search.optuna",
        "OptunaSearch",
        ("suggest", "on_trial_result", "on_trial_complete"),
        "OptunaSearch",
    ),
]
TRIAL_EVENTS = ("on_trial_start", "on_trial_complete", "on_trial_error")


@dataclass
class DriverTimes:
    """Seconds and calls per timed driver function; trial start/end as the driver saw them."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, str, float]] = field(default_factory=list)  # (hook, trial, time)
    lock: threading.Lock = field(default_factory=threading.Lock)  # MLflow writes are threaded

    def total(self, label: str) -> float:
        return sum(v for k, v in self.seconds.items() if k.startswith(label + "."))

    def text(self) -> str:
        return ", ".join(
            f"{k} {v:.2f} s / {self.calls[k]} calls" for k, v in sorted(self.seconds.items())
        )


@contextlib.contextmanager
def timed_driver() -> Iterator[DriverTimes]:
    """Time the TIMED functions while the block runs; the originals are put back after."""
    import importlib

    times = DriverTimes()
    patched = []

    def wrap(key: str, hook: str, fn: Any) -> Any:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            if key == "Tuner.fit":
                times.events.append((key, "", time.time()))
            elif key.startswith("MLflowTracker.") and hook in TRIAL_EVENTS:
                trial = kwargs.get("trial", args[2] if len(args) > 2 else None)
                times.events.append((hook, str(getattr(trial, "trial_id", "")), time.time()))
            try:
                return fn(self, *args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                with times.lock:
                    times.seconds[key] = times.seconds.get(key, 0.0) + dt
                    times.calls[key] = times.calls.get(key, 0) + 1

        return timed

    for module, cls_name, methods, label in TIMED:
        cls = getattr(importlib.import_module(module), cls_name)
        for name in methods:
            if name in cls.__dict__:
                original = cls.__dict__[name]
                patched.append((cls, name, original))
                setattr(cls, name, wrap(f"{label}.{name}", name, original))
    try:
        yield times
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)


@dataclass
class Epoch:
    step: int
    ts: float  # driver wall clock (s) when the result was logged to MLflow
    epoch_seconds: float
    train_seconds: float
    val_acc: float
    iter_s: float | None  # Tune's time_this_iter_s, measured in the worker
    pid: int | None  # the worker process that ran it (actor reuse keeps the pid)
    checkpointed: bool  # the epoch's report carried a checkpoint


@dataclass
class Trial:
    trial_id: str
    mlflow_start: float  # MLflow child run start/end (s); written by the tracker
    mlflow_end: float
    start: float  # when the driver's on_trial_start / on_trial_complete ran (s)
    end: float
    status: str
    stopped_early: bool
    epochs: list[Epoch]

    @property
    def epoch_seconds(self) -> float:
        return sum(e.epoch_seconds for e in self.epochs)

    @property
    def train_seconds(self) -> float:
        return sum(e.train_seconds for e in self.epochs)


@dataclass
class Sweep:
    name: str
    result: Any  # SweepResult
    t0: float  # wall clock (time.time) just before run_sweep
    t1: float  # just after it returned
    driver_cpu_s: float
    driver: DriverTimes
    load: LoadWatch
    trials: list[Trial]
    checkpoint_every_s: float | None

    @property
    def wall(self) -> float:
        return self.t1 - self.t0


def tune_results(exp_dir: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Tune's result.json rows per trial id and epoch (what the worker measured)."""
    import json

    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path in exp_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "epoch" in row:
                out.setdefault(str(row["trial_id"]), {})[int(row["epoch"])] = row
    return out


def collect(spec: Any, result: Any, driver: DriverTimes) -> list[Trial]:
    """Every trial of a finished sweep, from its MLflow child runs, Tune's result files and
    the driver's trial events."""
    from mlflow.tracking import MlflowClient

    from sweeps.tracking import TAG_STOPPED_EARLY, TAG_TRIAL, find_children

    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for hook, tid, t in driver.events:
        if hook == "on_trial_start":
            starts.setdefault(tid, t)
        elif hook in TRIAL_EVENTS:
            ends[tid] = t
    client = MlflowClient(result.tracking_uri)
    rows = tune_results(Path(spec.resolved_storage()) / spec.name)
    trials = []
    for run in find_children(client, result.experiment_id, result.parent_run_id):
        tid = run.data.tags.get(TAG_TRIAL, "")
        history = {
            key: {m.step: m for m in client.get_metric_history(run.info.run_id, key)}
            for key in ("epoch_seconds", "train_seconds", "val_acc")
        }
        epochs = []
        for step in sorted(history["epoch_seconds"]):
            row = rows.get(tid, {}).get(step, {})
            epochs.append(
                Epoch(
                    step=step,
                    ts=history["epoch_seconds"][step].timestamp / 1e3,
                    epoch_seconds=history["epoch_seconds"][step].value,
                    train_seconds=history["train_seconds"][step].value,
                    val_acc=history["val_acc"][step].value,
                    iter_s=row.get("time_this_iter_s"),
                    pid=row.get("pid"),
                    checkpointed=bool(row.get("checkpoint_dir_name")),
                )
            )
        m_start = run.info.start_time / 1e3
        m_end = (run.info.end_time or run.info.start_time) / 1e3
        trials.append(
            Trial(
                trial_id=tid,
                mlflow_start=m_start,
                mlflow_end=m_end,
                start=starts.get(tid, m_start),
                end=ends.get(tid, m_end),
                status=run.info.status,
                stopped_early=run.data.tags.get(TAG_STOPPED_EARLY) == "1",
                epochs=epochs,
            )
        )
    return sorted(trials, key=lambda t: t.start)


def run_one(spec: Any, text: str) -> Sweep:
    from sweeps.runner import run_sweep

    with LoadWatch() as load, timed_driver() as driver:
        c0 = time.process_time()
        t0 = time.time()
        result = run_sweep(spec, text, progress=False)
        t1 = time.time()
        cpu = time.process_time() - c0
    sweep = Sweep(
        spec.name,
        result,
        t0,
        t1,
        cpu,
        driver,
        load,
        collect(spec, result, driver),
        getattr(spec, "checkpoint_every_s", None),
    )
    print(
        f"[sweep_overhead] {spec.name}: {result.num_trials} trials in {sweep.wall:.1f} s",
        file=sys.stderr,
    )
    return sweep


def run_plain(spec: Any) -> Sweep:
    """The same trials run by ``benchmarks/sweep_scale.py``'s plain Ray Tune script: the
    service's trainable and base spec, Optuna's sampler through Tune's ``OptunaSearch``, FIFO,
    ``reuse_actors=True``; no MLflow, no result buffering. Trial and epoch times come from a
    callback in this driver, taken where the service's tracker takes them
    (on_trial_start/complete, on_trial_result)."""
    from ray import tune

    from sweeps.runner import _base, _slots

    class Times(tune.Callback):
        # Plain lists only: Tune pickles its callbacks into the experiment state.
        def __init__(self) -> None:
            self.events: list[tuple[str, str, float]] = []
            self.epochs: dict[str, list[Epoch]] = {}

        def setup(self, **info: Any) -> None:  # Tune calls it as Tuner.fit begins
            self.events.append(("Tuner.fit", "", time.time()))

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("on_trial_start", trial.trial_id, time.time()))

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            if "epoch_seconds" in result:
                self.epochs.setdefault(trial.trial_id, []).append(
                    Epoch(
                        step=int(result["epoch"]),
                        ts=time.time(),
                        epoch_seconds=result["epoch_seconds"],
                        train_seconds=result["train_seconds"],
                        val_acc=result["val_acc"],
                        iter_s=result.get("time_this_iter_s"),
                        pid=result.get("pid"),
                        checkpointed=bool(result.get("should_checkpoint")),
                    )
                )

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("on_trial_complete", trial.trial_id, time.time()))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append(("on_trial_error", trial.trial_id, time.time()))

    slots = _slots(spec, spec.num_samples)
    times, driver = Times(), DriverTimes()
    with LoadWatch() as load:
        c0, t0 = time.process_time(), time.time()
        grid = plain_tune(
            spec,
            _base(spec),
            slots,
            spec.num_samples,
            name=f"{spec.name}-plain",
            callbacks=[times],
        )
        t1, cpu = time.time(), time.process_time() - c0
    assert grid.num_errors == 0, f"{grid.num_errors} plain Tune trials failed"
    driver.events.extend(times.events)
    starts = {tid: t for hook, tid, t in times.events if hook == "on_trial_start"}
    ends = {tid: t for hook, tid, t in times.events if hook in TRIAL_EVENTS[1:]}
    trials = [
        Trial(tid, starts[tid], ends[tid], starts[tid], ends[tid], "FINISHED", False, es)
        for tid, es in times.epochs.items()
    ]
    print(f"[sweep_overhead] plain Tune: {len(trials)} trials in {t1 - t0:.1f} s", file=sys.stderr)
    return Sweep(
        f"{spec.name}-plain",
        None,
        t0,
        t1,
        cpu,
        driver,
        load,
        sorted(trials, key=lambda t: t.start),
        spec.checkpoint_every_s,
    )


def data_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``train.data`` section of a part's sweeps."""
    data = cfg.get("data", TRAIN["data"])
    return {**data, "num_train": cfg["num_train"], "num_test": cfg["num_test"]}


def warm_datasets(cfgs: Sequence[dict[str, Any]]) -> float:
    """Generate the parts' datasets into the on-disk cache before anything is timed (a one-off
    per machine and dataset, like the MLflow schema); return the seconds taken."""
    from trainers.data import DATASETS, DataSpec

    t = time.perf_counter()
    for cfg in cfgs:
        data = DataSpec.model_validate(data_spec(cfg))
        DATASETS.get(data.name).load(data)
    return time.perf_counter() - t


# What a new trial worker imports before its first epoch, whoever drives it: Ray's worker, Tune
# (its trainable wrapper), torch, the trainable's module (the trainers) and, at the first
# optimizer, torch._dynamo (torch.optim's `_disable_dynamo` wrapper imports it).
WORKER_IMPORTS = ("ray", "ray.tune", "torch", "sweeps.trainable", "torch._dynamo")
_IMPORT_TIMER = (
    "import importlib, json, sys, time\n"
    "out = []\n"
    "for name in sys.argv[1:]:\n"
    "    t = time.perf_counter()\n"
    "    importlib.import_module(name)\n"
    "    out.append(time.perf_counter() - t)\n"
    "print(json.dumps(out))\n"
)


def fresh_json(code: str, *args: str, timeout: float, **env: str) -> Any:
    """Run ``code`` in a fresh interpreter (this one's Python, in the repository, with ``env``
    added to this environment) and return the JSON it printed on its last line."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(done.stdout.splitlines()[-1])


def import_floor(modules: Sequence[str] = WORKER_IMPORTS) -> list[tuple[str, float]]:
    """Seconds each of ``modules`` takes to import, in turn, in a fresh interpreter.

    With ``WORKER_IMPORTS`` that is what every new trial worker pays before its first epoch,
    in the service and in a plain Tune script alike: a floor under both arms' overhead on this
    machine. Timed alone, before Ray starts; in a sweep the workers start at once beside the
    driver and take longer.
    """
    return list(zip(modules, fresh_json(_IMPORT_TIMER, *modules, timeout=300), strict=True))


def start_ray() -> float:
    """Start a fresh local Ray as ``sweeps.runner._init_ray`` does (``local_ray_init()``:
    always a new instance of our own, never someone else's running cluster); return the
    seconds taken."""
    import ray

    from sweeps.runner import local_ray_init

    t = time.perf_counter()
    ray.init(**local_ray_init())
    return time.perf_counter() - t


# Run in a fresh interpreter with one OpenMP thread, as Ray starts a 1-CPU trial's worker: the
# driver's own torch has a thread pool sized for the whole machine.
_PROBE = (
    "import json, sys\n"
    "from trainers import TrainSpec\n"
    "from trainers.loop import fit\n"
    "result = fit(TrainSpec.model_validate(json.loads(sys.argv[1])))\n"
    "print(json.dumps([h['epoch_seconds'] for h in result.history]))\n"
)


def calibrate_epochs(cfg: dict[str, Any], seconds: float, probe: int = 8) -> tuple[int, float]:
    """Epochs for part 1's trials to train about ``seconds`` each on this machine, and the
    seconds per epoch that gave them: ``probe`` epochs of the part's training (the middle of
    its radius range, one inner step) run alone in a fresh interpreter with one thread, as a
    1-CPU trial's worker, before Ray starts; the median ``epoch_seconds`` of the second half
    (past the warm-up) sets the count. For machines whose cores are faster or slower than
    the 2-core EPYC the defaults were set on, where a fixed epoch count gives trials of
    another length. Trials in the sweep share the machine, so theirs can differ by ~10-20%;
    the table gives the epoch times they really had."""
    train = {**TRAIN, "epochs": probe, "data": data_spec(cfg)}
    train["perturbation"] = {"kind": "amp", "radius": sum(RADIUS) / 2, "inner_steps": 1}
    epochs = fresh_json(_PROBE, json.dumps(train), timeout=600, OMP_NUM_THREADS="1")
    per_epoch = statistics.median(epochs[len(epochs) // 2 :])
    return max(1, round(seconds / per_epoch)), per_epoch


def init_mlflow(tmp: Path) -> float:
    """Create the SQLite tracking database (schema migrations) and the Optuna study database
    beside it (``SweepSpec.optuna_storage_url``: its tables) before anything is timed: both
    are one-offs per database, paid by a user's first sweep on it, not by every sweep."""
    from mlflow.tracking import MlflowClient

    from sweeps.studies import storage

    t = time.perf_counter()
    MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").search_experiments()
    storage(f"sqlite:///{tmp / 'mlflow.optuna.db'}")
    return time.perf_counter() - t


# -- analysis ------------------------------------------------------------------------------------


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals open at once (an end at the same instant as a start closes first)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def idle_slot_seconds(
    intervals: Sequence[tuple[float, float]], slots: int, lo: float, hi: float
) -> float:
    """Integral over [lo, hi] of (slots - trials running), floored at zero."""
    if hi <= lo:
        return 0.0
    points = sorted({lo, hi, *(t for iv in intervals for t in iv if lo < t < hi)})
    idle = 0.0
    for a, b in zip(points, points[1:], strict=False):
        mid = (a + b) / 2
        running = sum(s <= mid < e for s, e in intervals)
        idle += max(slots - running, 0) * (b - a)
    return idle


def worker_of(epoch: Epoch) -> float:
    """The worker's share of an epoch's report: Tune's ``time_this_iter_s`` less the epoch."""
    return 0.0 if epoch.iter_s is None else epoch.iter_s - epoch.epoch_seconds


def result_batches(epochs: Sequence[Epoch]) -> list[list[Epoch]]:
    """Epochs grouped by the driver call that delivered them. Tune may hand the driver several
    results at once (``sweeps.ray_internals.buffered_results``); the driver then logs them
    within milliseconds, while results that came one by one are at least an epoch apart."""
    batches: list[list[Epoch]] = []
    for x in epochs:
        if batches and x.ts - batches[-1][-1].ts < 0.5 * x.epoch_seconds:
            batches[-1].append(x)
        else:
            batches.append([x])
    return batches


def decompose(sweep: Sweep, slots: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Where the slot-seconds of ``run_sweep`` went: (label, slot-seconds) rows that sum to
    slots x wall, and per-epoch medians. Trial start/end are the driver's on_trial_start /
    on_trial_complete; epoch times are the driver's MLflow metric timestamps."""
    trials = [t for t in sweep.trials if t.epochs]
    ivs = [(t.start, t.end) for t in sweep.trials]
    first_start = min(s for s, _ in ivs)
    last_start = max(s for s, _ in ivs)
    last_end = max(e for _, e in ivs)
    fit_start = next((t for k, _, t in sweep.driver.events if k == "Tuner.fit"), sweep.t0)
    training = sum(t.epoch_seconds for t in trials)
    worker_epoch, roundtrip, closing = 0.0, 0.0, 0.0
    worker_ckpt: list[float] = []
    worker_plain: list[float] = []
    roundtrip_per_batch: list[float] = []
    batch_sizes: list[int] = []
    # The first trial in each worker process pays that process's imports; a reused actor's
    # trials do not (Tune's result rows carry the worker pid).
    seen_pids: set[int | None] = set()
    fresh, reused = [], []
    fresh_worker: list[float] = []
    for t in sorted(trials, key=lambda t: t.start):
        batches = result_batches(t.epochs)
        e, first = t.epochs, batches[0]
        # Before epoch 1: from the trial's start to its first batch's arrival, less that
        # batch's training and the reports of its later epochs (counted below).
        pre = first[-1].ts - t.start - sum(x.epoch_seconds + worker_of(x) for x in first)
        if e[0].pid in seen_pids:
            reused.append(pre + worker_of(e[0]))
        else:
            fresh.append(pre + worker_of(e[0]))
            fresh_worker.append(worker_of(e[0]))  # the part inside its first `train` call
        seen_pids.add(e[0].pid)
        for x in e[1:]:  # the worker's share of every later epoch's report
            if x.iter_s is not None:
                worker_epoch += worker_of(x)
                (worker_ckpt if x.checkpointed else worker_plain).append(worker_of(x))
        for prev, cur in zip(batches, batches[1:], strict=False):
            # A batch's round trip: its arrival after the previous one, less what the worker
            # spent on its epochs (training and report).
            gap = cur[-1].ts - prev[-1].ts - sum(x.epoch_seconds + worker_of(x) for x in cur)
            roundtrip += gap
            roundtrip_per_batch.append(gap)
        batch_sizes.extend(len(b) for b in batches)
        closing += t.end - e[-1].ts
    rows = [
        ("training: Σ epoch_seconds (train + evaluation)", training),
        (
            "run_sweep before Tuner.fit (MLflow parent run, Ray check, searcher)",
            slots * (fit_start - sweep.t0),
        ),
        (
            "Tuner.fit → first trial start (Tune set-up, worker process start + imports)",
            slots * (first_start - fit_start),
        ),
        (
            "gaps between trials in a slot (actor reuse, scheduling)",
            idle_slot_seconds(ivs, slots, first_start, last_start),
        ),
        (
            f"in trial before epoch 1, first trial of a worker ({len(fresh)}): imports, data, "
            "model, first result",
            sum(fresh),
        ),
        (
            f"in trial before epoch 1, reused worker ({len(reused)}): data generation, model, "
            "first result",
            sum(reused),
        ),
        ("per epoch ≥ 2, worker: checkpoint (when due) + tune.report", worker_epoch),
        (
            "per result batch ≥ 2, driver round trip (results → callbacks → next train)",
            roundtrip,
        ),
        ("trial close (last result → on_trial_complete)", closing),
        (
            "tail: idle slots after the last trial started",
            idle_slot_seconds(ivs, slots, last_start, last_end),
        ),
        (
            "after the last trial ended (drain, close parent run, Tune teardown)",
            slots * (sweep.t1 - last_end),
        ),
    ]
    if any(not t.epochs for t in sweep.trials):  # trials that never reported are all overhead
        rows.append(
            (
                "trials without epochs (start to end)",
                sum(t.end - t.start for t in sweep.trials if not t.epochs),
            )
        )

    def median(xs: Sequence[float], scale: float = 1.0) -> float:
        return scale * statistics.median(xs) if xs else math.nan

    per_epoch = {
        "actors": len(seen_pids),
        "first_fresh_s": median(fresh),
        "first_reused_s": median(reused),
        "first_fresh_worker_s": median(fresh_worker),
        "epoch_s": median([e.epoch_seconds for t in trials for e in t.epochs]),
        "worker_ckpt_ms": median(worker_ckpt, 1e3),
        "worker_ckpt_n": len(worker_ckpt),
        "worker_ms": median(worker_plain, 1e3),
        "roundtrip_ms": median(roundtrip_per_batch, 1e3),
        "batch_size": median(batch_sizes),
        "mlflow_lag_s": median([t.mlflow_start - t.start for t in sweep.trials]),
    }
    return rows, per_epoch


# -- part 1 --------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def secs(x: float) -> str:
    """Seconds with three decimals below 10 s: --quick's sums are a few hundredths of a second,
    which one decimal rounds to a misleading 0.0."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def part_overhead(
    cfg: dict[str, Any],
    tmp: Path,
    ray_start_s: float,
    floor: Sequence[tuple[str, float]] | None = None,
) -> tuple[str, dict]:
    import ray

    from sweeps.runner import _slots

    spec, text = make_spec(
        "overhead",
        tmp,
        cfg,
        sampler="random",
        scheduler={"name": "fifo"},
        ranges={"perturbation.radius": RADIUS, "perturbation.inner_steps": [1, 1]},
    )
    # init_mlflow created this study database's tables before timing.
    assert spec.optuna_storage_url() == f"sqlite:///{tmp / 'mlflow.optuna.db'}"
    slots = _slots(spec, spec.num_samples)
    sweep = run_one(spec, text)
    plain = run_plain(spec)
    plain_epoch = sum(t.epoch_seconds for t in plain.trials)
    plain_overhead = 1 - plain_epoch / (plain.wall * slots)
    plain_rows, plain_per_epoch = decompose(plain, slots)
    trials = sweep.trials
    mlflow_ivs = [(t.mlflow_start, t.mlflow_end) for t in trials]
    driver_ivs = [(t.start, t.end) for t in trials]
    sum_epoch = sum(t.epoch_seconds for t in trials)
    sum_train = sum(t.train_seconds for t in trials)
    wall_excl, wall_incl = sweep.wall, sweep.wall + ray_start_s
    overhead = {
        "epoch_excl": 1 - sum_epoch / (wall_excl * slots),
        "epoch_incl": 1 - sum_epoch / (wall_incl * slots),
        "train_excl": 1 - sum_train / (wall_excl * slots),
        "train_incl": 1 - sum_train / (wall_incl * slots),
    }
    capacity = wall_excl * slots
    decomposition, per_epoch = decompose(sweep, slots)
    per_trial = [t.epoch_seconds for t in trials]
    d = sweep.driver
    snapshots = d.calls.get("Tune experiment snapshot.checkpoint", 0)
    lines = [
        "| measure | value |",
        "|---|---:|",
        f"| trials finished / epochs each | {len(trials)} / {cfg['epochs']} |",
        f"| slots (Ray CPUs {ray.cluster_resources().get('CPU', 0):g}, 1 CPU per trial"
        + ("" if spec.max_concurrent is None else f", max_concurrent {spec.max_concurrent}")
        + ") "
        f"| {slots} |",
        f"| max trials running at once, MLflow run start/end | {max_overlap(mlflow_ivs)} |",
        f"| max trials running at once, driver on_trial_start/complete "
        f"| {max_overlap(driver_ivs)} |",
        f"| mean trials running (Σ trial durations / wall) "
        f"| {sum(e - s for s, e in driver_ivs) / wall_excl:.2f} |",
        f"| Ray start-up s (ray.init) | {ray_start_s:.1f} |",
        f"| wall s, incl. Ray start-up | {wall_incl:.1f} |",
        f"| wall s, run_sweep excl. Ray start-up | {wall_excl:.1f} |",
        f"| Σ epoch_seconds s, all trials | {secs(sum_epoch)} |",
        f"| Σ train_seconds s, all trials | {secs(sum_train)} |",
        f"| epoch_seconds per trial s, min / median / max | {min(per_trial):.1f} / "
        f"{statistics.median(per_trial):.1f} / {max(per_trial):.1f} |",
        f"| **overhead (epoch_seconds), excl. Ray start-up** | **{pct(overhead['epoch_excl'])}** |",
        f"| overhead (epoch_seconds), incl. Ray start-up | {pct(overhead['epoch_incl'])} |",
        f"| overhead (train_seconds), excl. Ray start-up | {pct(overhead['train_excl'])} |",
        f"| overhead (train_seconds), incl. Ray start-up | {pct(overhead['train_incl'])} |",
        f"| plain Ray Tune, the same trials: wall s / Σ epoch_seconds s "
        f"| {plain.wall:.1f} / {secs(plain_epoch)} |",
        f"| **plain Ray Tune: overhead (epoch_seconds)** | **{pct(plain_overhead)}** |",
        f"| median epoch_seconds s | {per_epoch['epoch_s']:.3f} |",
        f"| median per-epoch worker tune.report ms, without / with a checkpoint "
        f"({per_epoch['worker_ckpt_n']} epochs) | {per_epoch['worker_ms']:.1f} / "
        f"{per_epoch['worker_ckpt_ms']:.1f} |",
        f"| median driver round trip ms per result batch / results per batch "
        f"| {per_epoch['roundtrip_ms']:.1f} / {per_epoch['batch_size']:.0f} |",
        f"| the same, plain Ray Tune | {plain_per_epoch['roundtrip_ms']:.1f} / "
        f"{plain_per_epoch['batch_size']:.0f} |",
        f"| worker processes (actors) used by the trials | {per_epoch['actors']} |",
        f"| median trial start → first result − epoch 1 s, new actor / reused actor "
        f"| {per_epoch['first_fresh_s']:.2f} / {per_epoch['first_reused_s']:.2f} |",
        f"| of which in the new actor's first `train` call (set-up, epoch 1's report), service "
        f"/ plain Ray Tune s | {per_epoch['first_fresh_worker_s']:.2f} / "
        f"{plain_per_epoch['first_fresh_worker_s']:.2f} |",
        f"| median MLflow run start − driver on_trial_start s | {per_epoch['mlflow_lag_s']:.2f} |",
        f"| driver s in MLflowTracker hooks | {d.total('MLflowTracker'):.2f} |",
        f"| driver s in MlflowClient writes ({d.calls.get('MlflowClient.log_batch', 0)} "
        f"log_batch calls) | {d.total('MlflowClient'):.2f} |",
        f"| driver s in Tune experiment snapshots ({snapshots}) "
        f"| {d.total('Tune experiment snapshot'):.2f} |",
        f"| driver s in OptunaSearch | {d.total('OptunaSearch'):.2f} |",
        f"| driver process CPU s during run_sweep (all threads) | {sweep.driver_cpu_s:.1f} |",
    ]
    if floor:
        per_worker = sum(s for _, s in floor)
        lines.append(
            f"| a new worker's imports, timed alone in a fresh interpreter before Ray started "
            f"({', '.join(m for m, _ in floor)}) s; × {slots} slots, share of the slot time "
            f"| {' + '.join(f'{s:.2f}' for _, s in floor)} = {per_worker:.2f}; "
            f"{slots * per_worker:.1f} slot-s = {pct(slots * per_worker / capacity)} |"
        )
    else:
        lines.append("| a new worker's imports, timed alone | not measured (--quick) |")
    dec = [
        f"Where the {slots} × {wall_excl:.1f} = {capacity:.1f} slot-seconds of run_sweep (excl. "
        "Ray start-up) went, and where the plain Tune script's "
        f"{slots} × {plain.wall:.1f} = {slots * plain.wall:.1f} went. Trial start/end: the "
        "driver's on_trial_start/on_trial_complete; epoch ends: when the driver got the "
        "result (the service: its MLflow metric timestamps; plain: a callback); worker share "
        "of an epoch's report: Tune's `time_this_iter_s` − `epoch_seconds`. A result batch is "
        "the results one driver call delivered.",
        "",
        "| where | service slot-s | share | plain Tune slot-s | share |",
        "|---|---:|---:|---:|---:|",
    ]
    plain_by_row = dict(enumerate(plain_rows))
    plain_capacity = slots * plain.wall
    for i, (label, value) in enumerate(decomposition):
        p_label, p_value = plain_by_row.get(i, ("", math.nan))
        if p_label.split(" (")[0] != label.split(" (")[0]:
            p_value = math.nan  # a row only one arm has
        dec.append(
            f"| {label} | {value:.1f} | {pct(value / capacity)} | {p_value:.1f} "
            f"| {pct(p_value / plain_capacity)} |"
        )
    accounted = sum(v for _, v in decomposition)
    p_accounted = sum(v for _, v in plain_rows)
    dec.append(
        f"| (sum of rows) | {accounted:.1f} | {pct(accounted / capacity)} | {p_accounted:.1f} "
        f"| {pct(p_accounted / plain_capacity)} |"
    )
    notes = [
        f"config: {describe_data(cfg)}, cnn1d, AMP with inner_steps 1 "
        f"(radius searched in {RADIUS}), batch 128, {cfg['trials']} trials × {cfg['epochs']} "
        "epochs, 1 CPU and 1 torch thread per trial; FIFO scheduler, random sampler (seed 0); "
        f"spec checkpoint_every_s = {sweep.checkpoint_every_s}.",
        "overhead = 1 − Σ(training s) / (wall s × slots); training s = Σ over epochs of "
        "`epoch_seconds` (bold row; the loop's timer around one epoch's training and "
        "evaluation) or of `train_seconds` (training only).",
        f"load: {sweep.load.text()}.",
        f"driver time per timed function: {d.text()}.",
    ]
    values = {
        "overhead": overhead,
        "plain_overhead": plain_overhead,
        "plain_wall": plain.wall,
        "slots": slots,
        "max_concurrent": max_overlap(mlflow_ivs),
        "wall_excl": wall_excl,
        "wall_incl": wall_incl,
        "sum_epoch": sum_epoch,
        "sum_train": sum_train,
        "decomposition": decomposition,
        "per_epoch": per_epoch,
        "import_floor": list(floor or []),
    }
    body = (
        "\n".join(f"- {n}" for n in notes)
        + "\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(dec)
        + "\n"
    )
    return body, values


# -- part 2 --------------------------------------------------------------------------------------


@dataclass
class ArmResult:
    arm: str
    sweep: Sweep
    target: float
    slots: int

    def summary(self) -> dict[str, Any]:
        s = self.sweep
        best = s.result.best["val_acc"] if s.result.best else math.nan
        full = [t for t in s.trials if t.status == "FINISHED" and not t.stopped_early and t.epochs]
        hits_full = [t.mlflow_end - s.t0 for t in full if t.epochs[-1].val_acc >= self.target]
        hits_any = [e.ts - s.t0 for t in s.trials for e in t.epochs if e.val_acc >= self.target]
        any_best = max((e.val_acc for t in s.trials for e in t.epochs), default=math.nan)
        return {
            "arm": self.arm,
            "trials": len(s.trials),
            "stopped_early": sum(t.stopped_early for t in s.trials),
            "epochs": sum(len(t.epochs) for t in s.trials),
            "wall": s.wall,
            "best": best,
            "best_any": any_best,
            "ttt_full": min(hits_full) if hits_full else None,
            "ttt_any": min(hits_any) if hits_any else None,
            "training": sum(t.epoch_seconds for t in s.trials),
            # In the worker: first train() call to the first result, minus epoch 1 itself.
            "setup": sum(
                t.epochs[0].iter_s - t.epochs[0].epoch_seconds
                for t in s.trials
                if t.epochs and t.epochs[0].iter_s is not None
            ),
            "overhead": 1 - sum(t.epoch_seconds for t in s.trials) / (s.wall * self.slots),
        }


def part_search(cfg: dict[str, Any], asha: dict[str, Any], tmp: Path) -> tuple[str, dict]:
    from sweeps.runner import _slots

    arms = [
        ("FIFO + random", "random", {"name": "fifo"}),
        ("ASHA + TPE", "tpe", asha),
    ]
    results = []
    for label, sampler, scheduler in arms:
        name = "search-" + label.lower().replace(" + ", "-")
        spec, text = make_spec(
            name,
            tmp,
            cfg,
            sampler=sampler,
            scheduler=scheduler,
            ranges={"perturbation.radius": RADIUS},
        )
        results.append(
            ArmResult(label, run_one(spec, text), cfg["target"], _slots(spec, spec.num_samples))
        )
    lines = [
        "| arm | trials | stopped early | epochs run | wall s | Σ epoch_seconds s "
        "| best val_acc | s to target: finished full-length trial | s to target: any epoch "
        "| best val_acc at any epoch | Σ trial set-up s | slot overhead |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    values = []
    for r in results:
        v = r.summary()
        values.append(v)

        def t(x: float | None) -> str:
            return "not reached" if x is None else f"{x:.1f}"

        lines.append(
            f"| {v['arm']} | {v['trials']} | {v['stopped_early']} | {v['epochs']} "
            f"| {v['wall']:.1f} | {v['training']:.1f} | {v['best']:.4f} | {t(v['ttt_full'])} "
            f"| {t(v['ttt_any'])} | {v['best_any']:.4f} | {v['setup']:.1f} "
            f"| {pct(v['overhead'])} |"
        )
    notes = [
        f"config: {describe_data(cfg)}, cnn1d, AMP space (radius "
        f"{RADIUS}, inner_steps 1-3, inner_lr 0.1-2), {cfg['epochs']} epochs, {cfg['trials']} "
        f"trials per arm, 1 CPU per trial; ASHA {asha['grace_period']}/"
        f"{asha['reduction_factor']} (grace period / reduction factor), TPE with 4 random "
        "start-up trials; sampler seed 0; one seed per arm (a single draw, not a distribution).",
        f"**target val_acc = {cfg['target']}**. Times are seconds from the run_sweep call: "
        "'finished full-length trial' = the MLflow end time of the first trial that ran all "
        "epochs and whose final-epoch val_acc >= target (the sweep's ranking only counts such "
        "trials); 'any epoch' = the MLflow timestamp of the first per-epoch val_acc >= target "
        "of any trial, including ones ASHA stopped later. best val_acc = the sweep's best "
        "(final epoch, full-length trials).",
        "Σ trial set-up = Σ over trials of (Tune's time_this_iter_s of epoch 1 − its "
        "epoch_seconds): the worker's time from the trial's first train() call to its first "
        "result, outside training (data generation, model, imports in a new worker). slot "
        "overhead = 1 − Σ epoch_seconds / (wall s × slots), as in the overhead part.",
        "arms run one after the other on the same Ray instance (FIFO + random first).",
        *(f"load during {r.arm}: {r.sweep.load.text()}." for r in results),
    ]
    body = "\n".join(f"- {n}" for n in notes) + "\n\n" + "\n".join(lines) + "\n"
    return body, {"arms": values}


# -- main ----------------------------------------------------------------------------------------


def positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number of ``kind`` above zero, else one line naming the value."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {what} above 0, got {text!r}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["overhead", "search", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="tiny sweeps (2 trials of ~1 s)")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    p.add_argument("--target", type=float, help="part 2 target val_acc (default 0.82)")
    p.add_argument("--epochs", type=int, help="part 1 epochs per trial (default 120)")
    p.add_argument("--num-train", type=int, help="part 1 MNIST-1D training examples (4000)")
    p.add_argument(
        "--trial-seconds",
        type=positive(float),
        help="part 1: choose the epochs so a trial trains about this long here (calibrated "
        "before timing; overrides --epochs)",
    )
    p.add_argument(
        "--slots",
        type=positive(int),
        help="trials at once (the spec's max_concurrent; default: one per CPU); fewer leave "
        "cores to the driver and Ray's own processes, as on a cluster's head node",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary sweep directory")
    p.add_argument(
        "--cold-cache",
        action="store_true",
        help="an empty dataset cache: new workers generate MNIST-1D themselves",
    )
    return p.parse_args(argv)


def append(path: Path, section: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRO)
    with path.open("a") as f:
        f.write(f"\n{section}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen parts, print and append their sections; return their numbers."""
    args = parse_args(argv)
    import ray

    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/sweep_overhead.py", *argv]
    )
    over_cfg = dict(QUICK_OVERHEAD if args.quick else OVERHEAD)
    if args.epochs is not None:
        over_cfg["epochs"] = args.epochs
    if args.num_train is not None:
        over_cfg["num_train"] = args.num_train
    search_cfg = dict(QUICK_SEARCH if args.quick else SEARCH)
    over_cfg["slots"] = search_cfg["slots"] = args.slots
    if args.target is not None:
        search_cfg["target"] = args.target
    asha = QUICK_ASHA if args.quick else ASHA
    os.environ.pop("RAY_ADDRESS", None)  # our own local Ray, never a shared cluster
    tmp = Path(tempfile.mkdtemp(prefix="sweep_overhead-"))
    out: dict[str, Any] = {}
    started = datetime.datetime.now(datetime.UTC)
    if args.cold_cache:  # set before Ray starts: its workers inherit the environment
        os.environ["FLATSWEEP_CACHE_DIR"] = str(tmp / "dataset-cache")
    from trainers.data.datasets import cache_dir

    cached = len(list(cache_dir().glob("*.npz"))) if cache_dir().is_dir() else 0
    # First, on an idle machine: what every new worker imports (skipped by the smoke run).
    floor = None if args.quick or args.part == "search" else import_floor()
    warm_s = None if args.cold_cache else warm_datasets([over_cfg, search_cfg])
    calibration = ""
    if args.trial_seconds is not None and args.part != "search":
        over_cfg["epochs"], per_epoch = calibrate_epochs(over_cfg, args.trial_seconds)
        calibration = (
            f"- epochs calibrated for ~{args.trial_seconds:g}-s trials: {per_epoch:.3f} s per "
            "epoch alone (1 thread, a fresh interpreter, before Ray started) -> "
            f"{over_cfg['epochs']} epochs\n"
        )
    try:
        load_before_ray = os.getloadavg()
        if args.quick:
            # A smoke test, not a measurement: create the MLflow database while Ray starts.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                created = pool.submit(init_mlflow, tmp)
                ray_s = start_ray()
                mlflow_s = created.result()
        else:
            mlflow_s = init_mlflow(tmp)
            load_before_ray = os.getloadavg()
            ray_s = start_ray()
        quick = " (quick: smoke-test sizes, not a measurement)" if args.quick else ""
        common = (
            f"- machine: {machine()}\n"
            f"- code: {code_state()}\n"
            f"- command: `{command}`{quick}\n"
            + calibration
            + f"- Ray start-up (ray.init, local, no dashboard): {ray_s:.1f} s, load before it "
            f"{fmt_load(load_before_ray)}; MLflow and Optuna SQLite schema creation "
            f"(before timing): {mlflow_s:.1f} s\n"
            f"- dataset cache ({'--cold-cache' if args.cold_cache else cache_dir()}): "
            f"{cached} files at start; "
            + (
                "empty: each new worker generates MNIST-1D itself (seconds)\n"
                if warm_s is None
                else f"filled before timing in {warm_s:.1f} s (a one-off per machine)\n"
            )
        )
        parts = ["overhead", "search"] if args.part == "all" else [args.part]
        for part in parts:
            when = datetime.datetime.now(datetime.UTC)
            if part == "overhead":
                body, values = part_overhead(over_cfg, tmp, ray_s, floor)
                title = "sweep_overhead: Ray Tune + MLflow overhead per slot"
            else:
                body, values = part_search(search_cfg, asha, tmp)
                title = "sweep_overhead: search quality per wall time, ASHA + TPE vs FIFO + random"
            section = f"## {title} — {when:%Y-%m-%d %H:%M} UTC\n\n{common}{body}"
            print(section)
            append(args.results, section)
            out[part] = values
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if args.keep:
            print(f"[sweep_overhead] kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out["started"] = started.isoformat()
    return out


if __name__ == "__main__":
    main()
