"""benchmarks/sweep_overhead.py end to end in its --quick mode (starts a local Ray).

Both parts run as tiny sweeps and append their sections; the tables must hold every row with
positive numbers and the slot-second decomposition must add up. Speed is measured, never
asserted: no timing thresholds beyond a guard against a hung run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._scripts import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "sweep_overhead.py"

pytestmark = pytest.mark.cluster

# Rows of part 1's "| measure | value |" table that must hold positive numbers.
OVERHEAD_ROWS = [
    "trials finished / epochs each",
    "slots (Ray CPUs",
    "max trials running at once, MLflow run start/end",
    "max trials running at once, driver on_trial_start/complete",
    "Ray start-up s (ray.init)",
    "wall s, incl. Ray start-up",
    "wall s, run_sweep excl. Ray start-up",
    "Σ epoch_seconds s, all trials",
    "Σ train_seconds s, all trials",
    "**overhead (epoch_seconds), excl. Ray start-up**",
    "overhead (epoch_seconds), incl. Ray start-up",
    "overhead (train_seconds), excl. Ray start-up",
    "overhead (train_seconds), incl. Ray start-up",
    "plain Ray Tune, the same trials: wall s / Σ epoch_seconds s",
    "**plain Ray Tune: overhead (epoch_seconds)**",
    "median epoch_seconds s",
    "worker processes (actors) used by the trials",
]
ARMS = ["FIFO + random", "ASHA + TPE"]


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", cell.replace("*", ""))]


def tables(section: str) -> list[list[list[str]]]:
    """Every markdown table in ``section``: its data rows as lists of cells."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in section.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            out.append(current[2:])  # drop the header and the |---| rule
            current = []
    return out


def split_sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split(" — ", 1)[0]: p for p in parts[1:]}


def test_quick_run_appends_both_parts(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--cold-cache",
            "--slots",
            "1",
            "--results",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    text = results.read_text()
    assert text.startswith("# Benchmark results")  # the one-line intro of a new file
    sections = split_sections(text)
    overhead = sections["sweep_overhead: Ray Tune + MLflow overhead per slot"]
    search = sections["sweep_overhead: search quality per wall time, ASHA + TPE vs FIFO + random"]
    for section in (overhead, search):
        assert "--quick" in section and "UTC" in section
        assert "- machine: CPU " in section and "ray 2." in section and "torch " in section
        assert re.search(r"load: before [\d.]+/[\d.]+/[\d.]+|load during", section)
        assert "- dataset cache (--cold-cache): 0 files at start" in section

    measures, decomposition = tables(overhead)
    values = {row[0]: row[1] for row in measures}
    for label in OVERHEAD_ROWS:
        key = next((k for k in values if k.startswith(label)), None)
        assert key is not None, f"row {label!r} missing from\n{overhead}"
        nums = numbers(values[key])
        assert nums and all(v > 0 for v in nums), (label, values[key])
    assert numbers(values["trials finished / epochs each"]) == [2, 3]
    # --slots caps the trials at once (the spec's max_concurrent): one slot, one at a time.
    slots_row = next(k for k in values if k.startswith("slots (Ray CPUs"))
    assert slots_row.endswith("1 CPU per trial, max_concurrent 1)") and values[slots_row] == "1"
    assert numbers(values["max trials running at once, MLflow run start/end"]) == [1]
    # A new actor's wait for its first result, and the part of it inside its first `train`
    # call (where imports and set-up run), in both arms: a part, so no larger than the whole.
    whole = numbers(
        values["median trial start → first result − epoch 1 s, new actor / reused actor"]
    )
    inner = next(v for k, v in values.items() if k.startswith("of which in the new actor's"))
    assert len(numbers(inner)) == 2 and 0 < numbers(inner)[0] <= whole[0] + 0.01, (inner, whole)
    # The import floor is measured by full runs only (test_import_floor covers it).
    assert values["a new worker's imports, timed alone"] == "not measured (--quick)"
    # The decomposition's rows add up to slots x wall (100% of the capacity), for the service
    # (columns 1-2) and for the plain Tune script on the same trials (columns 3-4).
    *rows, total = decomposition
    assert total[0] == "(sum of rows)"
    # Each row and the total are printed to 0.1 s, so the rounded parts may miss the rounded
    # total by up to 0.05 s each (CI once saw 7.5 against 7.7 with a dozen rows).
    rounding = 0.05 * (len(rows) + 1) + 1e-9
    for value, share in ((1, 2), (3, 4)):
        parts = [numbers(r[value])[0] for r in rows]
        assert sum(parts) == pytest.approx(numbers(total[value])[0], abs=rounding)
        assert numbers(total[share])[0] == pytest.approx(100.0, abs=1.0)
    training = next(r for r in rows if r[0].startswith("training"))
    assert numbers(training[1])[0] > 0

    assert "target val_acc = 0.05" in search
    (arms,) = tables(search)
    assert [row[0] for row in arms] == ARMS
    for row in arms:
        trials, stopped, epochs, wall, training_s, best, t_full, t_any, best_any, setup, over = (
            numbers(c)[0] for c in row[1:]
        )
        assert trials == 2 and 0 <= stopped <= trials and epochs >= trials
        assert wall > 0 and training_s > 0 and 0 < t_full <= wall and 0 < t_any <= t_full
        assert 0 < best <= best_any <= 1
        assert setup > 0 and 0 < over < 100


def test_import_floor_times_each_module_in_turn_in_a_fresh_interpreter() -> None:
    """``import_floor`` (the full run's floor row) reports one positive time per module, in
    order, from an interpreter of its own: ``ray`` is imported there, not in the caller."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import sweep_overhead as s; "
        "print(json.dumps([s.import_floor(('json', 'ray')), 'ray' in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    floor, ray_here = json.loads(proc.stdout.splitlines()[-1])
    assert [m for m, _ in floor] == ["json", "ray"]
    assert all(s > 0 for _, s in floor) and floor[1][1] > floor[0][1]  # ray is no stdlib module
    assert not ray_here


@pytest.fixture(scope="module")
def sweep_overhead():
    """The script as a module (``tests._scripts``)."""
    return load_benchmark("sweep_overhead")


def test_calibrate_epochs_sizes_trials_from_a_probe_run(sweep_overhead) -> None:
    """``--trial-seconds``: a probe of 8 epochs of part 1's training (here the quick part's
    synthetic data), in an interpreter of its own, sets the epoch count from the median of
    its last 4 epochs; never fewer than one."""
    cfg = sweep_overhead.QUICK_OVERHEAD
    epochs, per_epoch = sweep_overhead.calibrate_epochs(cfg, 3.0)
    assert 0 < per_epoch < 3.0
    assert epochs == max(1, round(3.0 / per_epoch))
    assert sweep_overhead.calibrate_epochs(cfg, 1e-6, probe=2)[0] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slots", "0"], "argument --slots: must be a whole number above 0, got '0'"),
        (["--slots", "1.5"], "argument --slots: must be a whole number above 0, got '1.5'"),
        (["--trial-seconds", "-3"], "argument --trial-seconds: must be a number above 0, got '-3'"),
        (["--trial-seconds", "nan"], "argument --trial-seconds: must be a number above 0"),
    ],
)
def test_bad_slots_or_trial_seconds_stop_before_anything_runs(
    sweep_overhead, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by the argument parser (exit 2, one line naming the flag), before the import
    floor, the probe or Ray."""
    with pytest.raises(SystemExit) as e:
        sweep_overhead.parse_args(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert sweep_overhead.parse_args(["--slots", "2", "--trial-seconds", "30"]).slots == 2
