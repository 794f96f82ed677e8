"""Ray start-up: the local Ray a sweep starts for itself against Ray's default, side by side.

A sweep with no cluster named starts its own Ray with ``sweeps.runner.local_ray_init()``,
which turns off Ray 2.60's worker prestart (``prestart_worker_first_driver``): as the first
driver connects, Ray starts one idle Python worker per CPU, but Ray Tune creates its trial
actors with a runtime environment of their own (``env_vars``,
``ray/tune/execution/class_cache.py``), so they never fit those workers and Ray starts new
ones for them. This script measures what that costs.

Each start runs in a fresh subprocess (its own Ray, stopped by it), the two arms alternating,
``--repeats`` times each: ``service`` (``ray.init(**local_ray_init())``) and ``default`` (the same
arguments without ``_system_config``). Per start:

- ``ray.init`` seconds;
- the idle Python workers (``ray::IDLE``, under the raylet) one second after it returned;
- a Tune run of two trivial trials at once (a function trainable reporting its pid,
  ``reuse_actors=True``): ``Tuner.fit`` seconds, which include starting the trials' workers,
  and how many of the trials ran in a worker that existed before ``Tuner.fit`` (a prestarted
  one);
- the CPU seconds of the driver's child processes (Ray's) from before ``ray.init`` until the
  fit ended: what the start-up took from the cores the trials train on.

    python benchmarks/ray_start.py                 # 6 starts per arm (~3 min on 2 cores)
    python benchmarks/ray_start.py --quick         # 1 start per arm (the test's)

Prints a markdown section and appends it to ``benchmarks/RESULTS.md`` (``--results``
elsewhere) with the date (UTC), the machine, the code state and the exact command, unless
``--no-record``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_host.py
from _host import ROOT, code_state, cpu_model  # noqa: E402
from sweep_scale import append, fmt_load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ARMS = ("service", "default")

# One start, in a fresh interpreter (argv[1]: the arm). Prints one JSON line.
PROBE = r"""
import json, os, sys, time
os.environ.pop("RAY_ADDRESS", None)  # our own local Ray, never a shared cluster
import ray
from ray import tune
from sweeps.runner import local_ray_init


def children_cpu():
    # CPU seconds of the processes under this one, alive or reaped by it (/proc).
    total = 0.0
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # reaped children
    for pid in ours():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # its own and its reaped children's (the raylet reaps the workers it stops)
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def ours():
    # Every process under this one: the raylet, GCS and agents, and the raylet's workers.
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            pid = int(entry)
            while pid > 1 and pid != os.getpid():
                pid = parent(pid)
        except OSError:  # it ended while we looked
            continue
        if pid == os.getpid():
            found.append(int(entry))
    return found


def idle_workers():
    # An idle worker names itself ray::IDLE; before that it is python default_worker.py (the
    # raylet's own arguments mention default_worker.py too, hence argv[1:3] only).
    pids = []
    for pid in ours():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"ray::IDLE" or any(a.endswith(b"default_worker.py") for a in argv[1:3]):
            pids.append(pid)
    return pids


def trial(config):
    tune.report({"pid": os.getpid()})


kwargs = local_ray_init()
if sys.argv[1] == "default":
    del kwargs["_system_config"]
cpu0 = children_cpu()
t = time.perf_counter()
ray.init(**kwargs)
init_s = time.perf_counter() - t
time.sleep(1.0)
before = set(idle_workers())
t = time.perf_counter()
grid = tune.Tuner(
    trial,
    param_space={"x": tune.grid_search([0, 1])},
    tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
    run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0),
).fit()
fit_s = time.perf_counter() - t
pids = [r.metrics["pid"] for r in grid]
print(json.dumps({
    "init_s": init_s,
    "idle_workers": len(before),
    "fit_s": fit_s,
    "trials": len(pids),
    "errors": grid.num_errors,
    "on_prestarted": sum(p in before for p in pids),
    "ray_cpu_s": children_cpu() - cpu0,
}))
ray.shutdown()
"""


def start(arm: str, storage: Path) -> dict[str, Any]:
    """One fresh Ray of ``arm`` in a subprocess; its measurements."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE, arm, str(storage)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode != 0:
        raise SystemExit(f"ray_start: the {arm} start failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def spread(values: Sequence[float]) -> str:
    """Median (min–max) to 0.01."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| arm | starts | ray.init s, median (min–max) | idle workers 1 s later | Tuner.fit s "
        "(2 trivial trials) | trials run / on a prestarted worker | Ray's CPU s, ray.init to "
        "fit's end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in ARMS:
        rs = runs[arm]
        lines.append(
            f"| {arm} | {len(rs)} | {spread([r['init_s'] for r in rs])} "
            f"| {spread([r['idle_workers'] for r in rs])} | {spread([r['fit_s'] for r in rs])} "
            f"| {sum(r['trials'] - r['errors'] for r in rs)} / "
            f"{sum(r['on_prestarted'] for r in rs)} "
            f"| {spread([r['ray_cpu_s'] for r in rs])} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=6, help="starts per arm (default 6)")
    p.add_argument("--quick", action="store_true", help="one start per arm (a smoke run)")
    p.add_argument("--results", type=Path, default=RESULTS, help="file to append to")
    p.add_argument("--no-record", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, but got {args.repeats}")
    if args.quick:
        args.repeats = 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Start each arm's Ray ``--repeats`` times, alternating; print and append the table."""
    import tempfile

    args = parse_args(argv)
    command = shlex.join(
        sys.orig_argv if argv is None else ["python", "benchmarks/ray_start.py", *argv]
    )
    when = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory(prefix="ray_start-") as tmp:
        for i in range(args.repeats):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                runs[arm].append(start(arm, Path(tmp) / f"{arm}-{i}"))
    quick = " (quick: one start per arm, not a measurement)" if args.quick else ""
    section = (
        "## ray_start: the service's local Ray against Ray's default — "
        f"{when:%Y-%m-%d %H:%M} UTC\n\n"
        f"- machine: CPU {cpu_model()}, os.cpu_count() {os.cpu_count()}; ray {version('ray')}, "
        f"Python {platform.python_version()}\n"
        f"- code: {code_state()}\n"
        f"- command: `{command}`{quick}\n"
        f"- load average before: {fmt_load(load)}, after: {fmt_load(os.getloadavg())}\n"
        "- arms, alternating, each start a fresh subprocess with its own Ray: service = "
        "`ray.init(**sweeps.runner.local_ray_init())` (worker prestart off); default = the same "
        "arguments without `_system_config`. Ray's CPU: the driver's child processes (GCS, "
        "raylet, agents, workers).\n\n"
        f"{table(runs)}\n"
    )
    print(section)
    if not args.no_record:
        append(args.results, section)
    return runs


if __name__ == "__main__":
    main()
