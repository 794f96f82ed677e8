"""``sweeps reproduce``: re-run one paper row, a preset's method and its baseline over N seeds,
and print it next to the published numbers.

A preset is a sweep spec in ``examples/paper/`` whose ``train`` section is the paper's setting
as far as this project can express it (its comments list every deviation that remains).
``examples/paper/reference/papers.yaml`` holds the published numbers and their sources, keyed by
the preset's file name (``Reference``).

``reproduce`` calls ``run_sweep(..., search=False)``: no search, the preset's own config is the
one finalist, trained with ``finalists.seeds`` fresh seeds (``train.seed + 1 + i``) against the
baseline with the same seeds (the perturbation off: ERM, or plain PGD-AT for AWP), every
training a Ray Tune trial, all under one MLflow parent run named after the sweep. It then reads
the child runs back and builds a table (``ReproductionTable``): the paper's mean ± std, the
official logs' best and last epoch where they exist, and ours as mean ± sample std over seeds
at the best-validation epoch (``test_*_at_best_val``: the weights of the epoch ``trainers.fit``
keeps for ``test_at_best_val``) and at the last epoch, for the method, the baseline and their
difference paired by seed with its 95% t-interval. The table is printed and logged on the parent
run as ``reproduction.md`` and ``reproduction.json`` and as ``reproduce.*`` metrics
(``table_metrics``).

``epochs`` shortens (or lengthens) every training, moving each LR milestone to the same fraction
of training. ``data`` swaps the dataset and model for a CPU-sized stand-in (``SMOKE_DATA``) so
that the whole pipeline runs in a test in about a minute: such a run is a smoke test, labelled
so in its name and its table, never a reproduction.

Example:
    >>> p = plan("amp_cifar10", seeds=3, data_root="/data/cifar10")
    >>> result, table = run(p)
    >>> print(format_table(table))
"""

from __future__ import annotations

import copy
import math
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sweeps import jobs
from sweeps.dbinit import sqlite_path
from sweeps.spec import MAX_EPOCHS, MAX_SEEDS, NAME_RE, SpecError, SweepSpec
from sweeps.stats import mean_std, paired_difference
from sweeps.uris import redact
from trainers import test_metric_for
from trainers._yaml import load_yaml
from trainers.data import check_data
from trainers.registry import unknown_message
from trainers.spec import TrainSpec, format_validation_error

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from sweeps.runner import SweepResult
    from sweeps.tracking import Sweep

__all__ = [
    "PRESET_DIR",
    "REFERENCE_FILE",
    "SMOKE_DATA",
    "Plan",
    "Reference",
    "ReproductionTable",
    "collect",
    "find_preset",
    "format_table",
    "load_references",
    "plan",
    "run",
    "scale_milestones",
    "sides",
    "submit",
    "table_metrics",
]

PRESET_DIR = jobs.project_root() / "examples" / "paper"
REFERENCE_FILE = PRESET_DIR / "reference" / "papers.yaml"
#: The reference file's name inside a submitted job's working directory.
JOB_REFERENCE = "reference.yaml"

#: ``--data NAME``: a CPU-sized stand-in for a preset's dataset and model, for smoke tests of
#: the pipeline only. BatchNorm is on so that ``bn_update`` still has statistics to act on.
SMOKE_DATA: dict[str, dict[str, dict[str, Any]]] = {
    "mnist1d": {
        "data": {"name": "mnist1d", "num_train": 1000, "num_test": 500, "val_fraction": 0.2},
        "model": {"name": "cnn1d", "args": {"batchnorm": True}},
    },
    "digits": {
        "data": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "small_cnn", "args": {"batchnorm": True}},
    },
}

TAG_PRESET = "flatsweep.reproduce.preset"
TAG_SMOKE = "flatsweep.reproduce.smoke"  # the stand-in dataset, or "" for a real reproduction


# -- the published numbers ---------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PaperValue(_Strict):
    """A published mean ± std over the authors' runs, in percent."""

    mean: float
    std: float | None = None


class OfficialValue(_Strict):
    """The authors' released logs, in percent: the best epoch (by *test* number) and the last."""

    best: float | None = None
    last: float | None = None


class SideReference(_Strict):
    """One row of a paper's table: the method or its baseline."""

    label: str
    paper: PaperValue | None = None
    official: OfficialValue | None = None


class Sources(_Strict):
    paper: str | None = None
    official: str | None = None


class Reference(_Strict):
    """A preset's published numbers (``examples/paper/reference/papers.yaml``).

    ``metric`` is the child-run test metric ours comes from; ``quantity`` says how the paper
    states it, in percent: ``error`` = 100 - 100 · metric, ``accuracy`` = 100 · metric.
    """

    title: str
    metric: Literal["test_acc", "test_robust_acc"]
    quantity: Literal["error", "accuracy"]
    method: SideReference
    baseline: SideReference
    sources: Sources
    note: str | None = None


def load_references(path: Path | None = None) -> dict[str, Reference]:
    """The references by preset name; ``{}`` when the default file is absent (an install
    without ``examples/``). Raises ``SpecError`` (one line) for a malformed file."""
    p = REFERENCE_FILE if path is None else Path(path)
    if not p.is_file():
        if path is None:
            return {}
        raise SpecError(f"--reference: file {str(p)!r} does not exist")
    try:
        raw = load_yaml(p)
    except ValueError as e:
        raise SpecError(f"{p.name}: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p.name}: a reference file maps preset names to their numbers")
    out = {}
    for key, value in raw.items():
        try:
            out[str(key)] = Reference.model_validate(value)
        except ValidationError as e:
            raise SpecError(f"{p.name}: {key}.{format_validation_error(e, Reference)}") from None
    return out


# -- the plan: a preset with the command line's overrides ---------------------------------------


def preset_names() -> list[str]:
    """The presets shipped in ``examples/paper/``, by name."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def find_preset(preset: str) -> Path:
    """``preset`` as a spec file path, or the preset of that name in ``examples/paper/``."""
    path = Path(preset).expanduser()
    if path.is_file():
        return path
    candidate = PRESET_DIR / f"{preset}.yaml"
    if "/" not in preset and candidate.is_file():
        return candidate
    raise SpecError(
        f"preset: {preset!r} is not a file; "
        + unknown_message("preset", preset, preset_names() or ["(none installed)"])
    )


def scale_milestones(milestones: Sequence[int], old_epochs: int, new_epochs: int) -> list[int]:
    """Each LR milestone moved to the same fraction of ``new_epochs`` training epochs.

    Rounded half up and kept inside 1..new_epochs - 1 (a valid multistep schedule); milestones
    that land on the same epoch merge, so a very short run may decay fewer times. One epoch
    leaves no room for a decay: ``[]``.

    Example:
        >>> scale_milestones([100, 150], 200, 20), scale_milestones([100, 150], 200, 2)
        ([10, 15], [1])
    """
    if new_epochs < 2:
        return []
    scaled = {math.floor(m * new_epochs / old_epochs + 0.5) for m in milestones}
    return sorted({min(max(m, 1), new_epochs - 1) for m in scaled})


def _set_epochs(raw: dict[str, Any], epochs: int) -> None:
    """Set ``train.epochs`` and move everything counted in epochs with it."""
    train = raw["train"]
    old = int(train.get("epochs", TrainSpec.model_fields["epochs"].default))
    train["epochs"] = epochs
    schedule = train.get("schedule")
    if isinstance(schedule, dict):
        if schedule.get("milestones"):
            schedule["milestones"] = scale_milestones(schedule["milestones"], old, epochs)
        if schedule.get("warmup_epochs"):
            schedule["warmup_epochs"] = schedule["warmup_epochs"] * epochs / old
    perturbation = train.get("perturbation")
    if isinstance(perturbation, dict) and perturbation.get("warmup_epochs"):
        perturbation["warmup_epochs"] = perturbation["warmup_epochs"] * epochs // old
    scheduler = raw.get("scheduler")
    if isinstance(scheduler, dict):  # read by a search only; kept consistent for `sweeps resume`
        if scheduler.get("max_t"):
            scheduler["max_t"] = epochs
        if scheduler.get("grace_period"):
            scheduler["grace_period"] = max(1, scheduler["grace_period"] * epochs // old)


def default_name(spec_name: str, *, smoke: bool) -> str:
    """The sweep name of a reproduction: ``NAME-repro``, ``NAME-repro-smoke`` for a smoke test
    (never the preset's own name, which its search sweep uses)."""
    suffix = "-repro-smoke" if smoke else "-repro"
    return spec_name[: 64 - len(suffix)] + suffix


@dataclass
class Plan:
    """A reproduction ready to run: the preset, what was changed, and the validated spec."""

    preset: str  # the preset's name: its file name without .yaml
    path: Path  # the preset file
    spec: SweepSpec  # the sweep run_sweep runs (search=False)
    raw: dict[str, Any]  # the same, as the YAML stored on the parent run
    reference: Reference | None
    reference_file: Path | None
    smoke: str | None  # the stand-in dataset of a smoke test
    preset_epochs: int  # the preset's own epochs, before --epochs
    options: dict[str, Any] = field(default_factory=dict)  # the overrides given, by flag name

    @property
    def seeds(self) -> list[int]:
        """The training seeds of both sides: fresh ones after the spec's own, as run_sweep
        draws them without a search (``train.seed + 1 + i``)."""
        return [self.spec.train.seed + 1 + i for i in range(self.spec.finalists.seeds)]

    def spec_text(self) -> str:
        """The YAML stored on the parent run (``sweep.yaml``): the preset with the overrides."""
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.options.items())
        head = (
            f"# sweeps reproduce {self.preset} {given}".rstrip()
            + f"\n# {self.path.name} with these overrides; runs without a search stage.\n"
        )
        return head + yaml.safe_dump(self.raw, sort_keys=False)


def plan(
    preset: str,
    *,
    seeds: int | None = None,
    epochs: int | None = None,
    name: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    reference_file: Path | None = None,
    check_files: bool = True,
) -> Plan:
    """Load ``preset`` and apply the overrides; raise ``SpecError`` (one line) if invalid.

    Args:
        preset: a preset name in ``examples/paper/`` (``amp_cifar10``) or a spec file.
        seeds: training seeds per side (``finalists.seeds``); None keeps the preset's.
        epochs: epochs of every training; milestones and warm-ups scale with it.
        name: the sweep (and MLflow parent run) name; default ``default_name``.
        data: a ``SMOKE_DATA`` stand-in replacing the dataset and the model (CPU, 1 CPU per
            trial, no GPU): a smoke test of the pipeline, not the paper's setting.
        data_root: ``train.data.root`` (where the real dataset lives on the training machine).
        tracking_uri, storage_path: the sweep's MLflow store and Tune storage.
        reference_file: the published numbers; default ``REFERENCE_FILE``.
        check_files: check that the data root holds the dataset here (off for a cluster).
    """
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise SpecError(f"--seeds must be between 1 and {MAX_SEEDS}, but got {seeds}")
    if epochs is not None and not 1 <= epochs <= MAX_EPOCHS:
        raise SpecError(f"--epochs must be between 1 and {MAX_EPOCHS}, but got {epochs}")
    if name is not None and not NAME_RE.match(name):
        raise SpecError(
            "--name must be 1-64 characters of letters, digits, '_', '.', '-' starting with a "
            f"letter or digit, but got {name!r}"
        )
    if data is not None and data not in SMOKE_DATA:
        raise SpecError(f"--data: {unknown_message('smoke dataset', data, list(SMOKE_DATA))}")
    if data is not None and data_root is not None:
        raise SpecError(f"--data-root: the stand-in dataset {data!r} needs no root; drop one")
    path = find_preset(preset)
    try:
        loaded = load_yaml(path)
    except ValueError as e:
        raise SpecError(f"{path.name}: {e}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("train"), dict):
        raise SpecError(f"{path.name}: a preset is a sweep spec with a train section")
    raw: dict[str, Any] = copy.deepcopy(loaded)
    train = raw["train"]
    preset_epochs = int(train.get("epochs", TrainSpec.model_fields["epochs"].default))
    if data is not None:
        stand_in = copy.deepcopy(SMOKE_DATA[data])
        train["data"], train["model"] = stand_in["data"], stand_in["model"]
        # A CPU-sized run: on the CPU whatever the preset says, one CPU per trial, so that a
        # 2-CPU machine runs two trials at once.
        train["device"], train["channels_last"] = "cpu", False
        raw["resources"] = {"cpu": 1, "gpu": 0}
    if data_root is not None:
        if not isinstance(train.get("data"), dict):
            raise SpecError(f"{path.name}: train.data must be a mapping to take --data-root")
        train["data"]["root"] = data_root
        train["data"]["download"] = False  # the files are there: check them, fetch nothing
    if epochs is not None:
        _set_epochs(raw, epochs)
    finalists = raw.get("finalists") if isinstance(raw.get("finalists"), dict) else {}
    raw["finalists"] = {**finalists, "baseline": True}
    if seeds is not None:
        raw["finalists"]["seeds"] = seeds
    train["test_at_best_val"] = True
    # Local paths are made absolute here, so the stored spec and a submitted job (which runs
    # in another directory) name the same store.
    db = sqlite_path(tracking_uri) if tracking_uri is not None else None
    if db is not None:
        tracking_uri = f"sqlite:///{Path(db).expanduser().resolve()}"
    if storage_path is not None and "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    if tracking_uri is not None:
        raw["tracking_uri"] = tracking_uri
    if storage_path is not None:
        raw["storage_path"] = storage_path
    raw["name"] = name or default_name(str(raw.get("name", path.stem)), smoke=data is not None)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path.name}: {format_validation_error(e, SweepSpec)}") from None
    except ValueError as e:
        raise SpecError(f"{path.name}: {e}") from None
    if check_files:
        try:
            check_data(spec.train.data)
        except ValueError as e:
            raise SpecError(f"train.data.root: {e} (or give --data-root)") from None
    references = load_references(reference_file)
    reference = references.get(path.stem)
    if reference is not None:
        ours = test_metric_for(spec.primary[0])
        if ours != reference.metric:
            raise SpecError(
                f"reference: {path.stem} compares {reference.metric}, but the preset's metric "
                f"{spec.primary[0]!r} estimates {ours}"
            )
    options = {
        k: v
        for k, v in (
            ("seeds", seeds),
            ("epochs", epochs),
            ("name", name),
            ("data", data),
            ("data_root", data_root),
            ("tracking_uri", tracking_uri),
            ("storage_path", storage_path),
        )
        if v is not None
    }
    return Plan(
        preset=path.stem,
        path=path,
        spec=spec,
        raw=raw,
        reference=reference,
        reference_file=REFERENCE_FILE if reference_file is None else Path(reference_file),
        smoke=data,
        preset_epochs=preset_epochs,
        options=options,
    )


# -- the table ---------------------------------------------------------------------------------


@dataclass
class Side:
    """Our numbers for one row: per training seed, as the child runs logged them (fractions)."""

    label: str
    stage: str  # the child runs' flatsweep.stage: finalist | baseline
    last: dict[int, float] = field(default_factory=dict)  # test metric after the last epoch
    best_val: dict[int, float] = field(default_factory=dict)  # at the best-validation epoch
    best_epoch: dict[int, float] = field(default_factory=dict)
    run_ids: dict[int, str] = field(default_factory=dict)
    reference: SideReference | None = None
    # seeds whose run ended without a result: "diverged", "ran out of memory", "failed"
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class ReproductionTable:
    """One paper row re-run: the published numbers and ours, per seed."""

    preset: str
    title: str
    sweep: str
    metric: str  # the test metric, e.g. test_acc
    quantity: Literal["error", "accuracy"]
    epochs: int
    preset_epochs: int
    seeds: list[int]
    smoke: str | None
    method: Side
    baseline: Side
    reference: Reference | None = None

    @property
    def at_best_val(self) -> str:
        return f"{self.metric}_at_best_val"


def _label(kind: str, adversarial: bool) -> str:
    name = {"erm": "ERM", "sam": "SAM", "amp": "AMP", "awp": "AWP"}.get(kind, kind)
    return f"AT-{name}" if adversarial and kind != "erm" else ("AT" if adversarial else name)


def sides(p: Plan) -> tuple[Side, Side]:
    """The method's and the baseline's rows, empty, labelled as the paper labels them."""
    ref = p.reference
    adversarial = p.spec.train.adversarial is not None
    method = Side(
        ref.method.label if ref else _label(p.spec.train.perturbation.kind, adversarial),
        "finalist",
        reference=ref.method if ref else None,
    )
    baseline = Side(
        ref.baseline.label if ref else _label("erm", adversarial),
        "baseline",
        reference=ref.baseline if ref else None,
    )
    return method, baseline


def _fill(side: Side, runs: list[Run], metric: str) -> None:
    from sweeps import tracking

    for r in runs:
        seed = r.data.tags.get(tracking.TAG_SEED)
        if seed is None:
            continue
        s = int(seed)
        if (why := tracking.why_unusable(r, metric, metric)) is not None:
            if s not in side.run_ids:  # a resume's finished run of the seed counts instead
                side.failed[s] = why
            continue
        if r.info.status != "FINISHED":
            continue
        m = r.data.metrics
        side.failed.pop(s, None)
        side.run_ids[s] = r.info.run_id
        for values, key in (
            (side.last, metric),
            (side.best_val, f"{metric}_at_best_val"),
            (side.best_epoch, "best_val_epoch"),
        ):
            if key in m and math.isfinite(m[key]):
                values[s] = m[key]


def collect(client: MlflowClient, sweep: Sweep, p: Plan) -> ReproductionTable:
    """Our numbers from the sweep's finalist and baseline child runs (finished ones only)."""
    from sweeps import tracking

    metric = test_metric_for(p.spec.primary[0]) or p.spec.primary[0]
    method, baseline = sides(p)
    _fill(method, tracking.children(client, sweep, "finalist"), metric)
    _fill(baseline, tracking.children(client, sweep, "baseline"), metric)
    ref = p.reference
    return ReproductionTable(
        preset=p.preset,
        title=ref.title if ref else f"{method.label} vs {baseline.label}, {p.path.name}",
        sweep=p.spec.name,
        metric=metric,
        quantity=ref.quantity if ref else "accuracy",
        epochs=p.spec.train.epochs,
        preset_epochs=p.preset_epochs,
        seeds=p.seeds,
        smoke=p.smoke,
        method=method,
        baseline=baseline,
        reference=ref,
    )


def _pct(x: float, quantity: str) -> float:
    """A logged fraction in the paper's unit: percent error or percent accuracy."""
    return 100.0 * (1.0 - x) if quantity == "error" else 100.0 * x


def _ours(values: dict[int, float], quantity: str) -> str:
    if not values:
        return "-"
    mean, std = mean_std([_pct(v, quantity) for v in values.values()])
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"


def _ours_diff(a: dict[int, float], b: dict[int, float], quantity: str) -> str:
    common = sorted(set(a) & set(b))
    if not common:
        return "-"
    d = paired_difference(
        [_pct(a[s], quantity) for s in common], [_pct(b[s], quantity) for s in common]
    )
    if not math.isfinite(d.ci_low):
        return f"{d.mean:+.2f} (n=1, no interval)"
    return f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}] (n={d.n})"


def _paper(side: SideReference | None) -> str:
    if side is None or side.paper is None:
        return "-"
    p = side.paper
    return f"{p.mean:.2f} ± {p.std:g}" if p.std is not None else f"{p.mean:.2f}"


def _official(side: SideReference | None) -> str:
    o = side.official if side is not None else None
    if o is None or (o.best is None and o.last is None):
        return "-"
    return " / ".join("-" if x is None else f"{x:.2f}" for x in (o.best, o.last))


def _diff_or_dash(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.2f}"


def format_table(t: ReproductionTable) -> str:
    """The table as markdown, in the paper's unit (percent error or accuracy)."""
    m, b, ref = t.method, t.baseline, t.reference
    unit = f"test error % = 100 - 100 · {t.metric}" if t.quantity == "error" else f"{t.metric} in %"
    lines = [f"### {t.preset}: {t.title}", ""]
    if t.smoke:
        lines += [
            f"> **Smoke run, not a reproduction**: the dataset and model are replaced by "
            f"{t.smoke} and a small CPU model, and training is {t.epochs} epoch(s) "
            f"(preset: {t.preset_epochs}). The paper and official columns are printed for the "
            f"layout only; they cannot be compared with ours.",
            "",
        ]
    elif t.epochs != t.preset_epochs:
        lines += [
            f"> **Shortened run**: {t.epochs} epochs instead of the preset's "
            f"{t.preset_epochs}; not comparable with the paper.",
            "",
        ]
    lines += [
        f"sweep `{t.sweep}`, seeds {', '.join(map(str, t.seeds))}, {t.epochs} epochs; {unit}",
        "",
        "| | paper | official logs: best / last | ours: best-val epoch | ours: last epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for side in (m, b):
        lines.append(
            f"| {side.label} | {_paper(side.reference)} | {_official(side.reference)} | "
            f"{_ours(side.best_val, t.quantity)} | {_ours(side.last, t.quantity)} |"
        )
    mp = m.reference.paper if m.reference else None
    bp = b.reference.paper if b.reference else None
    mo = m.reference.official if m.reference else None
    bo = b.reference.official if b.reference else None
    official_diff = "-"
    if mo is not None and bo is not None:
        official_diff = " / ".join(
            _diff_or_dash(x, y) for x, y in ((mo.best, bo.best), (mo.last, bo.last))
        )
    lines.append(
        f"| {m.label} - {b.label} | "
        f"{_diff_or_dash(mp.mean if mp else None, bp.mean if bp else None)} | {official_diff} | "
        f"{_ours_diff(m.best_val, b.best_val, t.quantity)} | "
        f"{_ours_diff(m.last, b.last, t.quantity)} |"
    )
    epochs = ", ".join(
        f"{s.label} {mean_std(list(s.best_epoch.values()))[0]:.1f}" for s in (m, b) if s.best_epoch
    )
    for side in (m, b):
        if side.failed:
            from sweeps import tracking

            lines += [
                "",
                f"{side.label}: {tracking.describe_failures(side.failed)}; those seeds are in "
                "neither its numbers nor the paired difference.",
            ]
    lines += [
        "",
        "Ours: mean ± sample std over the seeds that finished (n); the difference row is paired "
        "by seed, with its 95% t-interval. Best-val epoch: the test set read with the weights "
        "of the epoch trainers.fit keeps for test_at_best_val (the first epoch of highest "
        f"val_acc){f'; mean epoch {epochs}' if epochs else ''}. Last epoch: after the last "
        "epoch.",
    ]
    if ref is not None:
        if ref.sources.paper:
            lines.append(f"Paper: {ref.sources.paper}.")
        if ref.sources.official:
            lines.append(f"Official logs: {ref.sources.official}.")
        if ref.note:
            lines.append(ref.note)
    lines.append(f"Deviations from the paper that remain: the comments of {t.preset}.yaml.")
    return "\n".join(lines) + "\n"


def table_metrics(t: ReproductionTable) -> dict[str, float]:
    """The parent run's ``reproduce.*`` metrics, as fractions like the child runs' metrics.

    Keys, with ``<m>`` the test metric (``test_acc``, ``test_robust_acc``) or its
    ``<m>_at_best_val``: ``reproduce.method.<m>.mean|std|n``, ``reproduce.baseline.<m>...``,
    ``reproduce.delta.<m>.mean`` (method - baseline, paired by seed) with ``.ci_low`` and
    ``.ci_high`` when finite, and ``reproduce.<side>.best_val_epoch.mean``.
    """
    out: dict[str, float] = {}
    for key, side in (("method", t.method), ("baseline", t.baseline)):
        for name, values in ((t.metric, side.last), (t.at_best_val, side.best_val)):
            if values:
                mean, std = mean_std(list(values.values()))
                out[f"reproduce.{key}.{name}.mean"] = mean
                out[f"reproduce.{key}.{name}.std"] = std
                out[f"reproduce.{key}.{name}.n"] = float(len(values))
        if side.best_epoch:
            epoch, _ = mean_std(list(side.best_epoch.values()))
            out[f"reproduce.{key}.best_val_epoch.mean"] = epoch
    for name, a, b in (
        (t.metric, t.method.last, t.baseline.last),
        (t.at_best_val, t.method.best_val, t.baseline.best_val),
    ):
        common = sorted(set(a) & set(b))
        if common:
            d = paired_difference([a[s] for s in common], [b[s] for s in common])
            out[f"reproduce.delta.{name}.mean"] = d.mean
            for bound, x in (("ci_low", d.ci_low), ("ci_high", d.ci_high)):
                if math.isfinite(x):  # one seed: no interval, rather than MLflow's ±1.8e308
                    out[f"reproduce.delta.{name}.{bound}"] = x
    return out


def _as_json(t: ReproductionTable) -> dict[str, Any]:
    def side(s: Side) -> dict[str, Any]:
        return {
            "label": s.label,
            "stage": s.stage,
            "last": s.last,
            "best_val": s.best_val,
            "best_val_epoch": s.best_epoch,
            "run_ids": s.run_ids,
            "reference": s.reference.model_dump() if s.reference else None,
        }

    return {
        "preset": t.preset,
        "title": t.title,
        "sweep": t.sweep,
        "metric": t.metric,
        "quantity": t.quantity,
        "epochs": t.epochs,
        "preset_epochs": t.preset_epochs,
        "seeds": t.seeds,
        "smoke": t.smoke,
        "method": side(t.method),
        "baseline": side(t.baseline),
        "sources": t.reference.sources.model_dump() if t.reference else None,
    }


def record(client: MlflowClient, parent_id: str, t: ReproductionTable) -> None:
    """Log the table on the parent run: ``reproduction.md``, ``reproduction.json``, the
    ``reproduce.*`` metrics and the tags ``flatsweep.reproduce.preset`` / ``.smoke``."""
    from mlflow.entities import Metric, RunTag

    from sweeps import tracking

    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, 0) for k, v in table_metrics(t).items()]
    tags = [RunTag(TAG_PRESET, t.preset), RunTag(TAG_SMOKE, t.smoke or "")]
    tracking.retrying(lambda: client.log_batch(parent_id, metrics=metrics, tags=tags))
    tracking.retrying(lambda: client.log_text(parent_id, format_table(t), "reproduction.md"))
    tracking.retrying(lambda: client.log_dict(parent_id, _as_json(t), "reproduction.json"))


def run(
    p: Plan, *, resume: bool = False, progress: bool = True
) -> tuple[SweepResult, ReproductionTable]:
    """Train the plan's method and baseline over its seeds on the current Ray cluster (local
    Ray if none), then collect, log and return the table.

    Raises ``sweeps.runner.Interrupted`` after Ctrl-C/SIGTERM (``resume=True`` continues it)
    and ``SpecError`` when the name is taken (or, to resume, unknown).
    """
    from mlflow.tracking import MlflowClient

    from sweeps import tracking
    from sweeps.runner import run_sweep

    result = run_sweep(p.spec, p.spec_text(), resume=resume, progress=progress, search=False)
    client = MlflowClient(result.tracking_uri)
    sweep = tracking.find_sweep(client, p.spec.name)
    if sweep is None:  # run_sweep has just created it
        raise SpecError(f"name: sweep {p.spec.name!r} vanished from {redact(result.tracking_uri)}")
    table = collect(client, sweep, p)
    record(client, result.parent_run_id, table)
    return result, table


# -- on a cluster: the same command as a Ray job ------------------------------------------------


def entrypoint(p: Plan) -> str:
    """The Ray job's command line: ``sweeps reproduce`` on the staged preset with the same
    overrides, a fixed argv (every value is an int, a checked name or a quoted path)."""
    options = p.options
    argv = ["python", "-m", "sweeps", "reproduce", f"{p.preset}.yaml"]
    argv += ["--reference", JOB_REFERENCE, "--name", p.spec.name, "--quiet"]
    for key in ("seeds", "epochs", "data", "data_root", "tracking_uri", "storage_path"):
        if key in options:
            argv += [f"--{key.replace('_', '-')}", str(options[key])]
    return shlex.join(argv)


def stage(p: Plan, dest: Path) -> Path:
    """Fill ``dest`` with the packages, the preset (under its own name, which keys its
    reference) and the reference file; return ``dest``."""
    jobs.stage(p.path, dest)
    (dest / jobs.SPEC_NAME).rename(dest / f"{p.preset}.yaml")
    refs = load_references(p.reference_file)
    keep = {p.preset: refs[p.preset].model_dump()} if p.preset in refs else {}
    (dest / JOB_REFERENCE).write_text(yaml.safe_dump(keep, sort_keys=False))
    return dest


def submit(
    p: Plan, address: str | None, *, shared_storage: bool = False, pip: bool = False
) -> jobs.SubmitResult:
    """Run the reproduction as the Ray job ``flatsweep-<name>`` on the cluster at ``address``
    (a dashboard URL); a job already there under that id is reported, not started twice.

    The spec is checked against the cluster first (``sweeps.preflight``); the job's own
    ``sweeps reproduce`` checks the data root there and logs the table as a local run does.
    """
    from sweeps.preflight import preflight, resolve_address
    from sweeps.uris import password_in

    address = resolve_address(address)
    preflight(p.spec, address, shared_storage=shared_storage)
    if password_in(p.options.get("tracking_uri", "")):
        # The job's argv is stored in the cluster and shown by the dashboard: never a secret.
        raise jobs.JobError(
            "--tracking-uri: it carries a password, which is not sent to the cluster; "
            "give the cluster MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead"
        )
    env = jobs.forwarded_env()  # refuses a tracking URI with a password before anything is sent
    c = jobs.client(address)
    sid = jobs.submission_id(p.spec.name)
    with tempfile.TemporaryDirectory(prefix="flatsweep-reproduce-") as d:
        runtime_env: dict[str, Any] = {"working_dir": str(stage(p, Path(d))), "env_vars": env}
        if pip:
            runtime_env["pip"] = jobs.pinned_requirements()
        try:
            job_id = c.submit_job(
                entrypoint=entrypoint(p),
                submission_id=sid,
                runtime_env=runtime_env,
                metadata={"flatsweep.sweep": p.spec.name, TAG_PRESET: p.preset},
            )
        except RuntimeError as e:
            if "already exists" not in str(e):
                raise jobs.JobError(
                    f"the Ray dashboard at {address} refused job {sid!r}: "
                    f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
                ) from None
            info = jobs.job_status(p.spec.name, address)
            return jobs.SubmitResult(
                info["submission_id"], info["status"], existed=True, message=info["message"]
            )
        except OSError as e:  # requests' ConnectionError is one
            raise jobs.JobError(
                f"cannot reach the Ray dashboard at {address} ({type(e).__name__})"
            ) from None
    return jobs.SubmitResult(job_id, "PENDING", existed=False)
