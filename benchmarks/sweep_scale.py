"""Throughput at scale: the sweep service against a plain Ray Tune script, N trials side by side.

Issue 10 §1. For each N (``--trials 200,1000,3000``) the same ~0.2 s trainable runs N times
twice, each run in its own subprocess with its own driver and its own local Ray
(``ray.init(address="local")``, stopped by that subprocess, which started it):

- **service**: ``sweeps.runner.run_sweep`` with a ``SweepSpec`` (FIFO scheduler, ``--sampler``
  TPE or random, ``max_concurrent`` = the CPU count (``--slots``), 1 CPU per trial,
  ``finalists.top_k: 0``, its own temporary SQLite tracking URI and Tune storage; the Optuna
  study in the SQLite file the service puts beside it), as ``sweeps run`` would call it
  (progress display on, which prints one line per finished trial when stdout is not a
  terminal).
- **plain**: the same trainable (``sweeps.trainable.train_trial`` with the same base spec via
  ``tune.with_parameters``), the same concurrency (a ``ConcurrencyLimiter`` of ``max_concurrent``
  around an ``OptunaSearch`` with the same search space and the same Optuna sampler, in-memory
  study), FIFO, ``reuse_actors=True``, the same ``num_to_keep=2`` checkpoints, no MLflow; every
  other Tune setting is Tune's default (its CSV/JSON/TensorBoard loggers, its adaptive
  experiment-snapshot period), as a user's own short script would have them, with
  ``verbose=0``.

The two run one after the other, the order alternating from run to run (service first in the
first), so a drift in the machine's load does not always favour the same one. ``--repeats R``
runs every N R times (all the N, then all again): the table has a row per run and each N's
ratios, their median and range, since on a machine whose cores the trials fill one run's ratio
is a draw (the same code gave 1.12 and 1.32 at 1000 trials on two 2-core machines).

Measured in each driver subprocess (``Meter`` wraps the functions named below in that process):

- wall seconds of ``run_sweep`` (service) and of ``Tuner(...)`` + ``Tuner.fit`` (plain); the
  imports, ``ray.init`` and the creation of the empty MLflow and Optuna databases come before
  and are reported apart;
- the driver's CPU seconds over that interval (``getrusage(RUSAGE_SELF)``, all its threads)
  per trial, and its peak RSS (``ru_maxrss``, the same as ``VmHWM``) with its RSS at the start,
  when ``Tuner.fit`` returned, and at every 5% of the trials completed (the slope between 25%
  and 95% is the growth per trial, start-up and the end's one-off imports excluded);
- the driver's CPU seconds between consecutive trial completions, as the mean per 10% bucket
  of the completions: whether its cost per trial grows with the finished trials (the first
  bucket holds the start-up, the service's last one the report's imports on a background
  thread, so the middle buckets are the comparison);
- the service's ``MlflowClient`` calls per trial (outermost calls only: ``log_text`` calling
  ``log_artifact`` counts once) and their payload bytes per trial: the keys and values of the
  call's arguments (strings as UTF-8, numbers as their text, MLflow entities by their fields,
  artifact files by size), roughly what MLflow's REST API carries without JSON syntax; also
  the seconds spent inside those calls (the tracker's writer thread and the driver's main
  thread apart), from which "MLflow s per trial" and the records per minute one writer can
  deliver follow;
- the time of each Optuna suggestion (the outermost ``OptunaSearch.suggest``, so the
  service's subclass with its storage writes is included), as the mean per 10% bucket of the
  suggestions in order; and the seconds in the searcher's ``on_trial_result`` /
  ``on_trial_complete`` (Optuna's ``tell``, a database write with a stored study);
- Tune's experiment snapshots (``TuneController.checkpoint``: count, seconds, largest) and the
  size of the last ``experiment_state`` file;
- when the driver saw each trial complete (``ConcurrencyLimiter.on_trial_complete``, the same
  hook in both arms), so the tail after the last trial ended is known, and the sum of the
  trials' ``epoch_seconds`` (the work both arms did, which should match);
- the service's own phases: before ``Tuner.fit``, ``Tuner.fit``, and after it (draining the
  MLflow writer, reconciling the study, closing the parent, the report).

"Nothing lost at scale": after the service's run, MLflow must hold exactly 1 parent run and N
child runs, none RUNNING, each FINISHED with its final metrics (``val_acc`` and ``test_acc``,
which only the last epoch reports); the records found otherwise are counted as lost and the
script exits 1.

    python benchmarks/sweep_scale.py                        # N = 200, 1000, 3000 (about 1 h)
    python benchmarks/sweep_scale.py --trials 200 --sampler random
    python benchmarks/sweep_scale.py --trials 1000 --repeats 3   # the ratio's spread
    python benchmarks/sweep_scale.py --trials 12 --no-record   # a smoke run (the test's)
    python benchmarks/sweep_scale.py --trials 1000 --slots 1   # the driver gets a core of its own
    python benchmarks/sweep_scale.py --trials 200 --profile prof/   # py-spy of each driver
    python benchmarks/sweep_scale.py --trials 1000 --tracking-uri http://127.0.0.1:5000

``--profile DIR`` samples each driver with py-spy (``DIR/<arm>-<N>.txt``, from the second
repeat on ``DIR/<arm>-<N>-<repeat>.txt``; collapsed stacks: ``flamegraph.pl`` or speedscope
draw them). ``--tracking-uri`` points the service at another MLflow (the PostgreSQL-backed
HTTP server of ``infra/local/up.sh``); each run's sweep name is unique, so runs on a shared
server stay apart.

Prints a markdown section (the table, the nothing-lost lines, a detail table per N) and
appends it to ``benchmarks/RESULTS.md`` (``--results`` elsewhere) with the date (UTC), the
machine (platform, CPU count, load average at the start) and the exact command, unless
``--no-record``. Exit code 1 when an arm failed or a record was lost.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import code_state, cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
INTRO = (
    "# Benchmark results\n\n"
    "Measurements appended by the scripts in `benchmarks/`, newest last; never edited by hand.\n"
)
TITLE = "sweep_scale: the service against plain Ray Tune, N trials"
ARMS = ("service", "plain")
BUCKETS = 10  # Optuna suggestion time: mean per 10% of the suggestions, in order

# The trainable: the "2 epochs of an mlp on 128 synthetic 1x40 signals", whose training
# "takes about 0.2 s". With Tune's default batch of 128 one epoch is a single step (~15 ms of
# training), so the batch is small. Measured as Σ epoch_seconds / N in the plain arm (training +
# evaluation, 2 trials sharing 2 cores): batch 8 (16 steps per epoch) gave 0.04-0.07 s per trial,
# a quarter of the trial, which weighs the fixed per-trial costs (Tune, MLflow, Optuna)
# about four times as heavily; batch 2 (64 steps) gives 0.15 s on a 2-core AMD EPYC, the nearest
# to 0.2 s (batch 1: about 0.3). The summary table prints this figure per arm, and
# ``--batch-size 8`` reproduces the earlier rows. AMP's inner step count is pinned at 1 so every
# trial costs the same whatever the sampler picks (TPE and random would otherwise run different
# mixes of K = 1..3 in the two arms); radius and inner LR are searched.
TRAIN: dict[str, Any] = {
    "model": {"name": "mlp"},
    "data": {
        "name": "synthetic",
        "shape": [1, 40],
        "num_classes": 10,
        "num_train": 128,
        "num_test": 128,
    },
    "optim": {"lr": 0.1, "momentum": 0.9},
    "perturbation": {"kind": "amp"},
    "epochs": 2,
    "batch_size": 2,
    "seed": 0,
    "device": "cpu",
}
SPACE: dict[str, Any] = {"name": "amp", "ranges": {"perturbation.inner_steps": [1, 1]}}
METRIC, MODE = "val_acc", "max"
FINAL_METRICS = ("val_acc", "test_acc")  # test_acc: reported by the last epoch only

# MlflowClient methods that upload local files: their payload is the files' size.
_ARTIFACT_CALLS = frozenset({"log_artifact", "log_artifacts"})


# -- measuring inside a driver -------------------------------------------------------------------


def payload_bytes(value: Any) -> int:
    """The bytes of a call argument's keys and values (strings UTF-8, numbers as text)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, bool | int | float):
        return len(repr(value))
    if isinstance(value, dict):
        return sum(payload_bytes(k) + payload_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(payload_bytes(v) for v in value)
    if hasattr(type(value), "_properties"):  # MLflow entities iterate as (field, value) pairs
        return payload_bytes(dict(value))
    if hasattr(value, "__dict__"):
        return payload_bytes({k: v for k, v in vars(value).items() if not k.startswith("_")})
    return len(str(value).encode())


def path_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a file, or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return 0


def bucket_means(seconds: Sequence[float], buckets: int = BUCKETS) -> list[float | None]:
    """Mean of ``seconds`` (in call order) per bucket of ``1/buckets`` of the calls; None for
    a bucket with no call (fewer calls than buckets)."""
    sums, counts = [0.0] * buckets, [0] * buckets
    n = len(seconds)
    for i, s in enumerate(seconds):
        b = i * buckets // n
        sums[b] += s
        counts[b] += 1
    return [sums[b] / counts[b] if counts[b] else None for b in range(buckets)]


class Meter:
    """Counts and times calls to functions wrapped in this process.

    Calls are grouped: only the outermost call of a group on a thread is measured (an
    ``MlflowClient`` method that calls another one counts once). Each label keeps its call
    count, seconds (split by thread: ``main`` or the other thread's name) and payload bytes;
    ``observe`` functions see each outermost call's arguments, result and timing.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.thread_seconds: defaultdict[str, float] = defaultdict(float)
        self.bytes: Counter[str] = Counter()
        self.paused = False
        self._local = threading.local()
        self._lock = threading.Lock()

    def now(self) -> float:
        """Seconds since the measured interval began (``start``)."""
        return time.perf_counter() - self.t0

    def start(self) -> None:
        """Begin the measured interval: forget what setup calls did."""
        self.t0 = time.perf_counter()
        self.calls.clear()
        self.seconds.clear()
        self.thread_seconds.clear()
        self.bytes.clear()

    def wrap(
        self,
        owner: Any,
        name: str,
        group: str,
        *,
        label: str | None = None,
        size: bool = False,
        observe: Callable[[tuple, dict, Any, float, float], None] | None = None,
    ) -> bool:
        """Replace ``owner.name`` (a plain function of a class or module) by a measured one.

        Returns False, changing nothing, when ``owner`` does not define ``name`` itself as a
        plain function (an inherited method is measured where it is defined), so the script
        keeps running when the measured code changes.
        """
        fn = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if not inspect.isfunction(fn):
            return False
        label = label or f"{group}.{name}"
        meter = self

        @functools.wraps(fn)
        def measured(*args: Any, **kwargs: Any) -> Any:
            if meter.paused or getattr(meter._local, group, False):
                return fn(*args, **kwargs)
            setattr(meter._local, group, True)
            payload = 0
            if size:
                payload = payload_bytes(args[1:]) + payload_bytes(kwargs)
                if name in _ARTIFACT_CALLS and len(args) > 2:
                    payload += path_bytes(args[2])
            start = time.perf_counter()
            out = None
            try:
                out = fn(*args, **kwargs)
                return out
            finally:
                dt = time.perf_counter() - start
                setattr(meter._local, group, False)
                thread = threading.current_thread()
                where = "main" if thread is threading.main_thread() else thread.name
                with meter._lock:
                    meter.calls[label] += 1
                    meter.seconds[label] += dt
                    meter.thread_seconds[f"{group}@{where}"] += dt
                    meter.bytes[label] += payload
                if observe is not None:
                    observe(args, kwargs, out, start - meter.t0, dt)

        setattr(owner, name, measured)
        return True

    def total(self, prefix: str) -> tuple[int, float, int]:
        """Calls, seconds and bytes of every label starting with ``prefix``."""
        keys = [k for k in self.calls if k.startswith(prefix)]
        return (
            sum(self.calls[k] for k in keys),
            sum(self.seconds[k] for k in keys),
            sum(self.bytes[k] for k in keys),
        )


class Observations:
    """What the shared hooks saw: suggestion times, completions, the trials' training time."""

    def __init__(self, meter: Meter, trials: int) -> None:
        self.meter = meter
        self.suggest_s: list[float] = []
        self.completed_at: list[float] = []
        self.cpu_at: list[float] = []  # the driver's CPU seconds (all threads) at each completion
        self.errors = 0
        self.epoch_seconds = 0.0
        self.results = 0
        self.snapshots: list[float] = []
        self.fit: list[tuple[float, float]] = []  # (start, duration) of Tuner.fit
        self.fit_rss_mb: list[float] = []  # the driver's RSS as each Tuner.fit returned
        # (trials completed, the driver's RSS MB then), every 5% of the trials: the slope
        # between 25% and 95% is the growth per trial, without start-up's or the end's one-offs.
        self.rss_by_trials: list[tuple[int, float]] = []
        self.rss_every = max(1, trials // 20)
        self.writer_cpu_s = 0.0  # the MLflow writer processes' CPU, all stages together
        self.writer_rss_peak_mb = 0.0  # the largest peak RSS of one writer process

    def suggested(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        if out is not None:  # a config (None: the searcher had nothing to give)
            self.suggest_s.append(dt)

    def result(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        result = args[2] if len(args) > 2 else kwargs.get("result", {})
        self.results += 1
        self.epoch_seconds += float((result or {}).get("epoch_seconds", 0.0))

    def complete(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        self.completed_at.append(start)
        self.cpu_at.append(cpu_s())
        if len(self.completed_at) % self.rss_every == 0:
            self.rss_by_trials.append((len(self.completed_at), rss_mb()[0]))
        error = args[3] if len(args) > 3 else kwargs.get("error", False)
        self.errors += bool(error)

    def snapshot(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        self.snapshots.append(dt)

    def fitted(self, args: tuple, kwargs: dict, out: Any, start: float, dt: float) -> None:
        self.fit.append((start, dt))
        self.fit_rss_mb.append(rss_mb()[0])

    def writer_closing(self, pid: int) -> None:
        """A writer process about to exit (drained): its CPU and peak RSS from /proc."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return
        # Fields 14 and 15 of stat (utime, stime), counted after the ")" of the name.
        self.writer_cpu_s += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = float(line.split()[1]) / 1024
                self.writer_rss_peak_mb = max(self.writer_rss_peak_mb, peak)


def install_common(meter: Meter, obs: Observations) -> None:
    """Hooks present in both arms: Tune's searcher wrapper, OptunaSearch, snapshots, fit."""
    import optuna
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    meter.wrap(ConcurrencyLimiter, "on_trial_result", "limiter", observe=obs.result)
    meter.wrap(ConcurrencyLimiter, "on_trial_complete", "limiter", observe=obs.complete)
    for method in ("suggest", "on_trial_result", "on_trial_complete"):
        observe = obs.suggested if method == "suggest" else None
        meter.wrap(OptunaSearch, method, "optuna", label=f"optuna.{method}", observe=observe)
    # checkpoint() runs every loop step and writes only when its period is due (save_to_dir).
    meter.wrap(TuneController, "checkpoint", "snapshot")
    meter.wrap(TuneController, "save_to_dir", "snapshot_write", observe=obs.snapshot)
    meter.wrap(tune.Tuner, "fit", "fit", observe=obs.fitted)
    # The sampler's own work inside a suggestion (the rest is the study's storage).
    for sampler in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        for method in ("infer_relative_search_space", "sample_relative", "sample_independent"):
            meter.wrap(sampler, method, "sampler", label=f"sampler.{method}")


# The service's own functions timed in its driver, each its own group: (module, owner, names).
SERVICE_TIMED = [
    ("sweeps.runner", None, ("_report",)),
    ("sweeps.studies", None, ("reconcile", "check_new", "check_warm_start")),
    ("sweeps.tracking", None, ("open_parent", "close_parent", "children", "best_run")),
    (
        "sweeps.tracking",
        "MLflowTracker",
        ("on_trial_start", "on_trial_result", "on_trial_complete", "drain", "_resolve"),
    ),
    ("sweeps.progress", "Progress", ("on_step_end", "on_trial_complete")),
    ("sweeps.trim", None, ("release_freed_memory",)),
]


def install_service(meter: Meter, obs: Observations) -> None:
    """Hooks of the service's driver: every public MlflowClient method, its own phases."""
    import importlib

    from mlflow.tracking import MlflowClient

    for name in list(vars(MlflowClient)):
        if not name.startswith("_"):
            meter.wrap(MlflowClient, name, "mlflow", label=f"mlflow.{name}", size=True)
    for module, owner, names in SERVICE_TIMED:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        target = getattr(mod, owner, None) if owner else mod
        for name in names:
            if target is not None:
                label = f"{module.split('.')[-1]}.{owner + '.' if owner else ''}{name}"
                meter.wrap(target, name, label, label=label)
    # The MLflow writer process (sweeps.writer_process): its CPU and memory, read as it is
    # closed. The MLflow calls it makes are not in this process's meter.
    try:
        from sweeps.writer_process import WriterProcess
    except ImportError:
        pass
    else:
        close = WriterProcess.close

        def closing(self: Any) -> None:
            # ``pids``: every child (several with FLATSWEEP_MLFLOW_PROCESS=N); ``_proc``: the
            # one child of the code before there could be several.
            proc = getattr(self, "_proc", None)
            for pid in getattr(self, "pids", [proc.pid] if proc is not None else []):
                obs.writer_closing(pid)
            close(self)

        WriterProcess.close = closing  # type: ignore[method-assign]
    # The service's OptunaSearch subclass wraps suggest with storage writes of its own: the
    # outermost call (in the "optuna" group) is the one a suggestion costs the driver.
    runner = importlib.import_module("sweeps.runner")
    for cls in vars(runner).values():
        if isinstance(cls, type) and cls.__module__ == runner.__name__:
            from ray.tune.search.optuna import OptunaSearch

            if issubclass(cls, OptunaSearch):
                for method in ("suggest", "on_trial_result", "on_trial_complete"):
                    observe = obs.suggested if method == "suggest" else None
                    meter.wrap(cls, method, "optuna", label=f"optuna.{method}", observe=observe)


# -- one arm in its own driver process -----------------------------------------------------------


def make_spec(
    name: str,
    n: int,
    tmp: Path,
    *,
    sampler: str,
    slots: int,
    batch_size: int,
    tracking_uri: str | None = None,
) -> tuple[Any, str]:
    """The SweepSpec both arms run (the plain arm takes its trainable settings from it).

    ``tracking_uri``: the service's MLflow (an HTTP server, PostgreSQL); by default a SQLite
    file in ``tmp``, with the Optuna study in the file the service puts beside it.
    """
    import yaml

    from sweeps.spec import SweepSpec, check_space

    raw = {
        "name": name,
        "train": {**TRAIN, "batch_size": batch_size},
        "space": SPACE,
        "searcher": {"sampler": sampler, "seed": 0},
        "scheduler": {"name": "fifo"},
        "num_samples": n,
        "max_concurrent": slots,
        "resources": {"cpu": 1, "gpu": 0},
        "metric": METRIC,
        "mode": MODE,
        "finalists": {"top_k": 0},
        "storage_path": str(tmp / "ray_results"),
        "tracking_uri": tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}",
    }
    spec = SweepSpec.model_validate(raw)
    check_space(spec)  # what load_spec checks besides the YAML itself
    return spec, yaml.safe_dump(raw, sort_keys=False)


def base_spec(spec: Any) -> dict[str, Any]:
    """The TrainSpec every trial starts from, as the service builds it (``runner._base``):
    the spec's train section with as many torch threads as CPUs a trial reserves."""
    base = spec.train.model_dump(mode="json")
    base["num_threads"] = max(1, int(spec.resources.cpu))
    return base


def rss_slope(r: dict[str, Any]) -> str:
    """The driver's RSS at a quarter and at 95% of the trials completed, and the growth per
    1000 trials between them: what each further trial costs, start-up and the end excluded."""
    points = r.get("rss_by_trials") or []
    if len(points) < 2:
        return "-"
    total = points[-1][0]
    first = next((p for p in points if p[0] >= total / 4), points[0])
    # Not the last sample: as the last trials run, the service's driver imports the end-of-sweep
    # report's libraries (about 100 MB once, sweeps.runner._WarmReport), a one-off that is no
    # trial's growth. Plain Tune's driver measures the same way.
    last = max((p for p in points if p[0] <= total * 0.95), default=points[-1])
    if last[0] == first[0]:
        return "-"
    slope = (last[1] - first[1]) * 1000 / (last[0] - first[0])
    return f"{first[1]:.0f} → {last[1]:.0f} ({slope:.0f})"


def cpu_per_tenth(r: dict[str, Any]) -> str:
    """The driver's CPU between consecutive trial completions, the mean per 10% of them: does
    its cost per trial grow with the finished trials? The first tenth holds the start (first
    workers, the searcher's start-up), the service's last one the report's imports on a
    background thread, so the middle ones compare."""
    cpu_at = r.get("cpu_at") or []
    if len(cpu_at) <= BUCKETS:
        return "-"
    gaps = [b - a for a, b in itertools.pairwise(cpu_at)]
    return " ".join(_ms(m) for m in bucket_means(gaps))


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc (VmRSS, VmHWM)."""
    fields: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return fields.get("VmRSS", 0.0), max(peak, fields.get("VmHWM", 0.0))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def check_records(tracking_uri: str, experiment: str, n: int) -> dict[str, Any]:
    """What MLflow holds for the sweep: parents, children by status, children with their final
    metrics; ``lost`` is every expected record (1 parent, N finished children) missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs: list[Any] = []
    token = None
    while exp is not None:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    parent_ids = {r.info.run_id for r in parents}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parent_ids]
    statuses = Counter(r.info.status for r in children)
    complete = [
        r
        for r in children
        if r.info.status == "FINISHED" and all(m in r.data.metrics for m in FINAL_METRICS)
    ]
    return {
        "parents": len(parents),
        "parent_status": [r.info.status for r in parents],
        "children": len(children),
        "children_status": dict(statuses),
        "running": statuses.get("RUNNING", 0) + sum(r.info.status == "RUNNING" for r in parents),
        "complete": len(complete),
        "orphans": len(runs) - len(parents) - len(children),
        # Expected records missing: the parent, or a child with its final metrics.
        "lost": max(0, 1 - len(parents)) + max(0, n - len(complete)),
        # Exactly 1 finished parent and N children, every one finished with its metrics.
        "ok": (
            [r.info.status for r in parents] == ["FINISHED"]
            and len(children) == len(complete) == n
            and len(runs) == n + 1
        ),
    }


def newest_bytes(storage: Path, pattern: str) -> int:
    """Size of the newest file matching ``pattern`` under ``storage`` (Tune's snapshots)."""
    files = sorted(storage.rglob(pattern), key=lambda p: p.stat().st_mtime)
    return files[-1].stat().st_size if files else 0


def run_arm(arm: str, n: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one arm in this process (its driver) and return what was measured."""
    t_import = time.perf_counter()
    import ray

    meter = Meter()
    obs = Observations(meter, n)
    install_common(meter, obs)
    slots = args.slots or os.cpu_count() or 1
    spec, text = make_spec(
        args.name,
        n,
        tmp,
        sampler=args.sampler,
        slots=slots,
        batch_size=args.batch_size,
        tracking_uri=args.tracking_uri,
    )
    base = base_spec(spec)
    out: dict[str, Any] = {"arm": arm, "n": n, "slots": slots, "sampler": args.sampler}
    if arm == "service":
        import optuna
        from mlflow.tracking import MlflowClient

        import sweeps.runner

        install_service(meter, obs)
        # The same trainable settings as the plain arm (checked, not assumed).
        out["same_base_spec"] = sweeps.runner._base(spec) == base
        # Empty databases, as a user's existing tracking store: schema creation is a one-off.
        t = time.perf_counter()
        meter.paused = True
        MlflowClient(spec.resolved_tracking_uri()).search_experiments()
        if spec.optuna_storage_url() is not None:
            optuna.storages.RDBStorage(spec.optuna_storage_url())
        meter.paused = False
        out["db_setup_s"] = time.perf_counter() - t
    out["import_s"] = time.perf_counter() - t_import
    # "local": a Ray of our own, never one another process started (stopped below); the
    # service's arm starts it as the service does (sweeps.runner.local_ray_init()).
    ray_init = {
        "address": "local",
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if arm == "service":
        ray_init = sweeps.runner.local_ray_init()
    t = time.perf_counter()
    ray.init(**ray_init)
    out["ray_init_s"] = time.perf_counter() - t
    out["ray_cpus"] = ray.cluster_resources().get("CPU", 0)
    try:
        rss_start, _ = rss_mb()
        cpu0 = cpu_s()
        meter.start()
        if arm == "service":
            from sweeps.runner import run_sweep

            run_sweep(spec, text)
        else:
            out["plain_trials"] = len(plain_tune(spec, base, slots, n))
        wall = meter.now()
        out["driver_cpu_s"] = cpu_s() - cpu0
        rss_end, rss_peak = rss_mb()
        out.update(wall_s=wall, rss_start_mb=rss_start, rss_end_mb=rss_end, rss_peak_mb=rss_peak)
        meter.paused = True
        if arm == "service":
            out["records"] = check_records(spec.resolved_tracking_uri(), spec.name, n)
    finally:
        ray.shutdown()
    done = sorted(obs.completed_at)
    storage = Path(spec.resolved_storage())
    out.update(
        completed=len(done),
        cpu_at=obs.cpu_at,
        errors=obs.errors,
        last_complete_s=done[-1] if done else None,
        results=obs.results,
        epoch_seconds=obs.epoch_seconds,
        suggest_s=obs.suggest_s,
        snapshots=len(obs.snapshots),
        snapshot_s=sum(obs.snapshots),
        snapshot_max_s=max(obs.snapshots, default=0.0),
        experiment_state_bytes=newest_bytes(storage, "experiment_state*.json"),
        searcher_state_bytes=newest_bytes(storage, "searcher-state*.pkl"),
        fit=obs.fit,
        fit_rss_mb=obs.fit_rss_mb,
        rss_by_trials=obs.rss_by_trials,
        writer_cpu_s=obs.writer_cpu_s,
        writer_rss_peak_mb=obs.writer_rss_peak_mb,
        calls=dict(meter.calls),
        seconds=dict(meter.seconds),
        bytes=dict(meter.bytes),
        thread_seconds=dict(meter.thread_seconds),
    )
    return out


def plain_tune(
    spec: Any,
    base: dict[str, Any],
    slots: int,
    n: int,
    *,
    name: str | None = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The plain Ray Tune script: the service's trainable and searcher, no MLflow; returns
    Tune's ResultGrid. ``benchmarks/sweep_overhead.py`` runs it too, with its own timing
    callbacks and experiment name."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    import search_spaces
    from sweeps.searchers import SAMPLERS
    from sweeps.trainable import train_trial

    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial,
            base=base,
            worst={METRIC: spec.diverged_value},
            checkpoint_every_s=spec.checkpoint_every_s,
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    searcher = OptunaSearch(
        space=search_spaces.define_by_run(spec.space_name, spec.ranges()),
        metric=METRIC,
        mode=MODE,
        sampler=SAMPLERS.get(spec.searcher.sampler).build(spec),
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=slots),
            num_samples=n,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name or spec.name,
            storage_path=spec.resolved_storage(),
            callbacks=list(callbacks),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return tuner.fit()


# -- the orchestrator ----------------------------------------------------------------------------


def machine(load: Sequence[float]) -> str:
    from importlib import metadata

    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("ray", "optuna", "mlflow", "torch"))
    return (
        f"{platform.platform()}, {cpu_model()}, os.cpu_count() {os.cpu_count()}, load average "
        f"at start {fmt_load(load)} (1/5/15 min); {versions}, Python {platform.python_version()}"
    )


def redact(uri: str) -> str:
    """A URI without its credentials (``user:password@``)."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else uri


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a timed-out arm: SIGTERM its driver (ray.shutdown runs), then its process group
    (the driver and the Ray processes it started: a group this script created)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def launch(
    arm: str, n: int, tmp: Path, args: argparse.Namespace, profile: Path | None, rep: int = 1
) -> dict[str, Any]:
    """Run one arm in a fresh driver subprocess; its measurements, or its failure. ``rep``
    (the repeat, from 1) keeps a repeat's directory, sweep name and profile apart."""
    run_id = f"{n}" if rep == 1 else f"{n}-{rep}"
    work = tmp / f"{arm}-{run_id}"
    work.mkdir(parents=True)
    result = work / "result.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        arm,
        "--trials",
        str(n),
        "--tmp",
        str(work),
        "--out",
        str(result),
        "--sampler",
        args.sampler,
        "--batch-size",
        str(args.batch_size),
        "--name",
        f"{args.name}-{run_id}",
    ]
    if args.slots:
        cmd += ["--slots", str(args.slots)]
    if args.tracking_uri:
        cmd += ["--tracking-uri", args.tracking_uri]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    env.pop("RAY_ADDRESS", None)  # each arm starts its own local Ray
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = work / "driver.log"
    timeout = args.timeout_s if args.timeout_s is not None else 300 + 2 * n
    load = os.getloadavg()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        spy = None
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "50",
                    "--nonblocking",
                    "--subprocesses",
                    "-o",
                    str(profile / f"{arm}-{run_id}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        if spy is not None:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait()
    tail = log_path.read_text(errors="replace")[-3000:]
    if rc != 0 or not result.exists():
        why = f"timed out after {timeout} s" if rc is None else f"exit code {rc}"
        return {"arm": arm, "n": n, "failed": why, "log_tail": tail, "load_before": load}
    out = json.loads(result.read_text())
    out["load_before"], out["load_after"] = load, os.getloadavg()
    return out


def per_trial(value: float, n: int, scale: float = 1.0) -> float:
    return value * scale / max(n, 1)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _first_last(r: dict[str, Any]) -> str:
    means = [m for m in bucket_means(r["suggest_s"]) if m is not None]
    return f"{_ms(means[0])} → {_ms(means[-1])}" if means else "-"


def _at(n: int, label: str) -> str:
    return f"N={n} (run {label})" if label else f"N={n}"


def nothing_lost_line(svc: dict[str, Any], label: str = "") -> str:
    """The verdict on the service's records at one N (``label``: the repeat, e.g. ``"2/3"``)."""
    n = svc["n"]
    at = _at(n, label)
    if "failed" in svc:
        return f"- {at}: service run failed ({svc['failed']}): records not checked"
    r = svc["records"]
    status = ", ".join(f"{k} {v}" for k, v in sorted(r["children_status"].items())) or "none"
    head = "nothing lost" if r["ok"] else f"**NOT ALL RECORDS ({r['lost']} lost)**"
    return (
        f"- {head} at {at}: MLflow holds {r['parents']} parent "
        f"({', '.join(r['parent_status']) or '-'}) and {r['children']} children ({status}), "
        f"{r['running']} RUNNING, {r['complete']}/{n} FINISHED with "
        f"{' and '.join(FINAL_METRICS)}"
    )


def summary_row(n: int, svc: dict[str, Any], plain: dict[str, Any], label: str = "") -> str:
    """One table row: the two arms at ``n`` trials (``label``, e.g. ``"2/3"``, names the
    repeat)."""
    first = f"{n} ({label})" if label else str(n)
    if "failed" in svc or "failed" in plain:
        bad = ", ".join(f"{r['arm']} {r['failed']}" for r in (svc, plain) if "failed" in r)
        return f"| {first} | failed: {bad} |" + " |" * 10
    calls, _, nbytes = _mlflow(svc)
    lost = svc["records"]["lost"]
    return (
        f"| {first} | {svc['wall_s']:.1f} | {plain['wall_s']:.1f} | "
        f"**{svc['wall_s'] / plain['wall_s']:.2f}** | "
        f"{per_trial(svc['epoch_seconds'], n):.3f} / {per_trial(plain['epoch_seconds'], n):.3f} | "
        f"{per_trial(svc['driver_cpu_s'], n, 1000):.1f} + "
        f"{per_trial(svc.get('writer_cpu_s', 0.0), n, 1000):.1f} / "
        f"{per_trial(plain['driver_cpu_s'], n, 1000):.1f} | "
        f"{svc['rss_peak_mb']:.0f} + {svc.get('writer_rss_peak_mb', 0.0):.0f} / "
        f"{plain['rss_peak_mb']:.0f} | "
        f"{per_trial(calls, n):.1f} | {per_trial(nbytes, n):.0f} | "
        f"{_first_last(svc)} | {_first_last(plain)} | {lost} |"
    )


def _mlflow(r: dict[str, Any]) -> tuple[int, float, int]:
    keys = [k for k in r["calls"] if k.startswith("mlflow.")]
    return (
        sum(r["calls"][k] for k in keys),
        sum(r["seconds"][k] for k in keys),
        sum(r["bytes"][k] for k in keys),
    )


def _phases(r: dict[str, Any]) -> str:
    if not r["fit"]:
        return "-"
    fit_start = min(s for s, _ in r["fit"])
    fit_end = max(s + d for s, d in r["fit"])
    return f"{fit_start:.1f} / {fit_end - fit_start:.1f} / {r['wall_s'] - fit_end:.1f}"


def detail_table(n: int, svc: dict[str, Any], plain: dict[str, Any]) -> str:
    """Where each arm's time and memory went at one N."""
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("trials completed (driver saw) / errors", lambda r: f"{r['completed']} / {r['errors']}"),
        ("Tune results (epochs) seen by the searcher", lambda r: str(r["results"])),
        ("Σ trials' epoch_seconds s (the work done)", lambda r: f"{r['epoch_seconds']:.1f}"),
        ("wall s (run_sweep / Tuner + fit)", lambda r: f"{r['wall_s']:.1f}"),
        ("before Tuner.fit / Tuner.fit / after it, s", _phases),
        (
            "tail: last trial complete → end, s",
            lambda r: (
                "-" if r["last_complete_s"] is None else f"{r['wall_s'] - r['last_complete_s']:.1f}"
            ),
        ),
        ("driver CPU s (all threads)", lambda r: f"{r['driver_cpu_s']:.1f}"),
        (
            "MLflow writer process: CPU s / peak RSS MB",
            lambda r: f"{r.get('writer_cpu_s', 0.0):.1f} / {r.get('writer_rss_peak_mb', 0.0):.0f}",
        ),
        (
            "driver RSS MB: start → peak (growth per 1000 trials)",
            lambda r: (
                f"{r['rss_start_mb']:.0f} → {r['rss_peak_mb']:.0f} "
                f"({(r['rss_peak_mb'] - r['rss_start_mb']) * 1000 / n:.0f})"
            ),
        ),
        (
            # The trials' own growth, without the end of the sweep (the report's imports and
            # figures, the runs read back once), which is paid once whatever N.
            "driver RSS MB when Tuner.fit returned (growth per 1000 trials from start)",
            lambda r: (
                "-"
                if not r.get("fit_rss_mb")
                else f"{r['fit_rss_mb'][-1]:.0f} "
                f"({(r['fit_rss_mb'][-1] - r['rss_start_mb']) * 1000 / n:.0f})"
            ),
        ),
        (
            "driver RSS MB at 25% → 95% of trials completed (slope per 1000 trials)",
            rss_slope,
        ),
        (
            "Tune snapshots written: count / s / largest s (s in checkpoint())",
            lambda r: (
                f"{r['snapshots']} / {r['snapshot_s']:.1f} / {r['snapshot_max_s']:.2f} "
                f"({r['seconds'].get('snapshot.checkpoint', 0.0):.1f})"
            ),
        ),
        (
            "last snapshot KB: experiment state / searcher state",
            lambda r: (
                f"{r['experiment_state_bytes'] / 1024:.0f} / {r['searcher_state_bytes'] / 1024:.0f}"
            ),
        ),
        (
            "driver CPU ms per trial (all threads), per 10% of the trials completed",
            cpu_per_tenth,
        ),
        (
            "Optuna ms per suggestion, per 10% of suggestions",
            lambda r: " ".join(_ms(m) for m in bucket_means(r["suggest_s"])),
        ),
        (
            "Optuna s: suggest (of it in the sampler) / on_trial_result / on_trial_complete",
            lambda r: (
                f"{r['seconds'].get('optuna.suggest', 0.0):.1f} "
                f"({sum(v for k, v in r['seconds'].items() if k.startswith('sampler.')):.1f}) / "
                f"{r['seconds'].get('optuna.on_trial_result', 0.0):.1f} / "
                f"{r['seconds'].get('optuna.on_trial_complete', 0.0):.1f}"
            ),
        ),
        ("ray.init s / imports s", lambda r: f"{r['ray_init_s']:.1f} / {r['import_s']:.1f}"),
        (
            "load average before → after (1 min)",
            lambda r: f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}",
        ),
    ]
    lines = [f"| N={n} | service | plain |", "|---|---:|---:|"]
    for label, fn in rows:
        lines.append(f"| {label} | {fn(svc)} | {fn(plain)} |")
    calls, seconds, nbytes = _mlflow(svc)
    writer = sum(v for k, v in svc["thread_seconds"].items() if k.startswith("mlflow@"))
    main = svc["thread_seconds"].get("mlflow@main", 0.0)
    per_min = 60 * n / seconds if seconds else float("inf")
    lines.append(
        f"| MLflow: calls / KB / s in calls (writer thread, main thread) | "
        f"{calls} / {nbytes / 1024:.0f} / {seconds:.1f} ({writer - main:.1f}, {main:.1f}) | - |"
    )
    lines.append(
        f"| MLflow s per trial (trials per minute one writer delivers) | "
        f"{seconds / n * 1000:.0f} ms ({per_min:.0f}) | - |"
    )
    top = sorted(
        (k for k in svc["calls"] if k.startswith("mlflow.")), key=lambda k: -svc["seconds"][k]
    )
    lines.append(
        "| MLflow per trial by method: calls, ms, bytes | "
        + "; ".join(
            f"{k.removeprefix('mlflow.')} {svc['calls'][k] / n:.2f}, "
            f"{svc['seconds'][k] / n * 1000:.1f}, {svc['bytes'][k] / n:.0f}"
            for k in top
        )
        + " | - |"
    )
    own = sorted(
        (
            k
            for k in svc["seconds"]
            if not k.startswith(("mlflow.", "optuna.", "limiter.", "sampler.", "snapshot", "fit."))
        ),
        key=lambda k: -svc["seconds"][k],
    )
    lines.append(
        "| service functions: calls, s | "
        + "; ".join(f"{k} {svc['calls'][k]}, {svc['seconds'][k]:.2f}" for k in own)
        + " | - |"
    )
    return "\n".join(lines)


def _label(run: dict[str, Any], repeats: int) -> str:
    return f"{run['rep']}/{repeats}" if repeats > 1 else ""


def spread_lines(runs: list[dict[str, Any]], repeats: int) -> list[str]:
    """With ``repeats`` > 1: each N's wall-time ratios, their median and range (why: the
    module's docstring)."""
    if repeats < 2:
        return []
    lines = []
    for n in dict.fromkeys(r["n"] for r in runs):
        ratios = [
            r["service"]["wall_s"] / r["plain"]["wall_s"]
            for r in runs
            if r["n"] == n and "failed" not in r["service"] and "failed" not in r["plain"]
        ]
        if not ratios:
            continue
        lines.append(
            f"- ratio at N={n} over {len(ratios)} of {repeats} runs: median "
            f"**{statistics.median(ratios):.2f}**, range {min(ratios):.2f}–{max(ratios):.2f} "
            f"(in run order: {', '.join(f'{x:.2f}' for x in ratios)})"
        )
    return lines


def report(runs: list[dict[str, Any]], header: str, repeats: int = 1) -> str:
    """The markdown section: the summary table (a row per run), the ratios' spread over the
    repeats, nothing-lost lines, a detail table per run. ``runs``: one dict per run of both
    arms, with ``n``, ``rep`` (1-based), ``order`` and each arm's measurements."""
    lines = [
        header,
        "| N | service wall s | plain wall s | ratio | training s/trial (service / plain) | "
        "driver CPU ms/trial (service + its MLflow writer process / plain) | "
        "peak RSS MB (service driver + writer process / plain) | "
        "MLflow calls/trial (driver process) | MLflow bytes/trial (driver process) | "
        "Optuna ms/suggestion, first → last 10% (service) | (plain) | lost records |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(summary_row(run["n"], run["service"], run["plain"], _label(run, repeats)))
    lines.append("")
    lines += spread_lines(runs, repeats)
    lines += [nothing_lost_line(run["service"], _label(run, repeats)) for run in runs]
    for run in runs:
        n, svc, plain = run["n"], run["service"], run["plain"]
        at = _at(n, _label(run, repeats))
        lines.append("")
        if "failed" in svc or "failed" in plain:
            for r in (svc, plain):
                if "failed" in r:
                    lines.append(f"{at} {r['arm']} failed ({r['failed']}); its log ends:")
                    lines.append("```\n" + r["log_tail"][-1500:] + "\n```")
            continue
        lines.append(f"Run order at {at}: {' then '.join(run['order'])}.")
        lines.append("")
        lines.append(detail_table(n, svc, plain))
    return "\n".join(lines) + "\n"


def append(path: Path, section: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRO)
    with path.open("a") as f:
        f.write(f"\n{section}")


def parse_trials(text: str) -> list[int]:
    """``"200,1000,3000"`` -> ``[200, 1000, 3000]``; each at least 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--trials must be comma-separated integers, but got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--trials must be >= 1 each, but got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=parse_trials, default=[200, 1000, 3000])
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of both arms at each N (the table gives each, with the ratios' median and "
        "range)",
    )
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    p.add_argument("--batch-size", type=int, default=TRAIN["batch_size"])
    p.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--timeout-s", type=float, default=None, help="per arm; 300 + 2 s x N")
    p.add_argument("--profile", type=Path, default=None, help="py-spy each driver into DIR")
    p.add_argument(
        "--slots",
        type=int,
        default=None,
        help="trials at once (default: the CPU count); fewer leaves the driver a core of its "
        "own, as on a cluster's head node",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="the service's MLflow (e.g. an HTTP server); default: a SQLite file per run",
    )
    # An arm in its own driver process (what the orchestrator launches).
    p.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    # The sweep's name (unique per run, so a shared tracking server keeps every run apart).
    p.add_argument(
        "--name",
        default=f"scale-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}",
        help=argparse.SUPPRESS,
    )
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, but got {args.batch_size}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, but got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run both arms at every N, print the section and append it; 1 on a failure or a loss."""
    args = parse_args(argv)
    if args.worker is not None:
        (n,) = args.trials
        out = run_arm(args.worker, n, args.tmp, args)
        args.out.write_text(json.dumps(out))
        return 0
    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/sweep_scale.py", *argv]
    )
    load = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="sweep_scale-"))
    runs: list[dict[str, Any]] = []
    try:
        # Every N once, then again for each repeat, so a drift in the machine's load spreads
        # over the N; the order of the arms alternates from one run to the next.
        plan = [(rep, n) for rep in range(1, args.repeats + 1) for n in args.trials]
        for i, (rep, n) in enumerate(plan):
            order = ARMS if i % 2 == 0 else ARMS[::-1]
            run: dict[str, Any] = {"n": n, "rep": rep, "order": list(order)}
            runs.append(run)
            for arm in order:
                print(f"[sweep_scale] N={n} (run {rep}): {arm} ...", file=sys.stderr, flush=True)
                run[arm] = launch(arm, n, tmp, args, args.profile, rep)
    finally:
        if args.keep:
            print(f"[sweep_scale] kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    slots = args.slots or os.cpu_count() or 1
    tracking = (
        f"`{redact(args.tracking_uri)}`" if args.tracking_uri else "SQLite (+ Optuna storage)"
    )
    # The service's own settings from the environment (writer processes, writers, ...): a
    # run with FLATSWEEP_MLFLOW_PROCESS=2 is not the default service.
    settings = ", ".join(
        f"{k}={redact(v)}" for k, v in sorted(os.environ.items()) if k.startswith("FLATSWEEP_")
    )
    header = (
        f"## {TITLE} — {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: {machine(load)}\n"
        f"- code: {code_state()}\n"
        f"- command: `{command}`{f' with {settings}' if settings else ''}\n"
        f"- trainable: `sweeps.trainable.train_trial`, mlp on {TRAIN['data']['num_train']} "
        f"synthetic 1x40 signals, {TRAIN['epochs']} epochs, batch {args.batch_size}, AMP with "
        f"K = 1 (radius, inner LR searched); FIFO, {args.sampler} sampler (seed 0), "
        f"{slots} concurrent trials of 1 CPU, reuse_actors=True. Service: run_sweep, "
        f"{tracking} MLflow, finalists.top_k 0. Plain: Tune defaults, in-memory study, "
        f"no MLflow. Each arm in its own driver process with its own local Ray.\n"
        f"- driver CPU: getrusage of the driver over the run; peak RSS: its VmHWM; MLflow "
        f"calls: outermost MlflowClient calls; bytes: their arguments' keys and values "
        f"(artifacts by file size); Optuna: the outermost OptunaSearch.suggest.\n\n"
    )
    section = report(sorted(runs, key=lambda r: (r["n"], r["rep"])), header, args.repeats)
    print(section)
    if not args.no_record:
        append(args.results, section)
    bad = any("failed" in run[a] for run in runs for a in ARMS) or any(
        not run["service"]["records"]["ok"] for run in runs if "records" in run["service"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
