"""``SweepSpec``: one YAML file describes a whole sweep, validated before anything starts.

``metric`` and ``mode`` are stated once here and handed to every component (the Optuna
searcher, the Tune scheduler, the MLflow parent run, export). ``validate_spec`` checks
everything that can be checked without starting Ray or writing to MLflow: the YAML, the keys,
the registry names, the data roots, and that points sampled from the search space (plus every
range's corners) make valid ``TrainSpec``s.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import search_spaces
from sweeps.dbinit import sqlite_path
from sweeps.searchers import MAX_BRACKETS, SAMPLERS, SCHEDULERS
from sweeps.uris import password_in
from trainers import EPOCH_METRICS, FINAL_METRICS, TEST_METRICS, test_metric_for
from trainers._yaml import load_yaml
from trainers.data import check_data
from trainers.spec import TrainSpec, format_validation_error

# \Z, not $: "$" also matches before a final newline, and a name goes into paths and ids.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
DEFAULT_TRACKING_DB = "flatsweep.db"


class SpecError(ValueError):
    """A sweep spec that cannot run; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: Upper bounds on what one spec may ask of a cluster. A spec is user input that reaches a
#: cluster: each count is refused above its bound with one line naming the field.
MAX_TRIALS = 10_000  # num_samples
MAX_CONCURRENT = 1_024  # max_concurrent
MAX_EPOCHS = 10_000  # train.epochs
MAX_FINALISTS = 20  # finalists.top_k
MAX_SEEDS = 20  # finalists.seeds


class SpaceSpec(_Strict):
    """A registered search space, with optional ``[low, high]`` overrides per parameter.

    ``name`` defaults to the space of ``train.perturbation.kind`` (the regularizer is stated
    once); a name that searches another kind is refused.
    """

    name: str | None = None
    ranges: dict[str, list[float]] = Field(default_factory=dict)
    optimizer: bool = False  # also search optim.lr and optim.weight_decay

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None:
            search_spaces.SPACES.get(v)
        return v


class SearcherSpec(_Strict):
    """Optuna sampler used by Ray Tune's ``OptunaSearch`` (``sweeps.searchers.SAMPLERS``)."""

    sampler: str = "tpe"
    seed: int | None = Field(0, ge=0, lt=2**32)  # numpy's RandomState takes 0..2**32-1
    n_startup_trials: int = Field(4, ge=0)  # TPE/GP: random trials before the model kicks in
    # TPE only, opt-in: build its densities from the last max_history trials and the 25 best
    # before them, so a suggestion's cost stops growing with the sweep (sweeps/bounded_tpe.py:
    # Optuna's suggestions exactly up to max_history + 25 trials, then more exploration;
    # benchmarks/tpe_history.py). None (the default): Optuna's TPE over every trial
    # (sweeps/incremental_tpe.py: its suggestions, kept state between them).
    max_history: int | None = Field(None, ge=250)
    # Optuna RDB storage for the sweep's study (a SQLAlchemy URL). None: a SQLite file beside
    # a SQLite tracking store (``flatsweep.optuna.db``), else $FLATSWEEP_OPTUNA_STORAGE, else
    # the study lives only in Tune's experiment state. Not the tracking DB itself: MLflow and
    # Optuna both keep their schema version in a table named ``alembic_version``.
    storage: str | None = None
    # Earlier sweeps (names) over the same search space whose finished trials seed this
    # sweep's study, so a re-run with a bigger budget starts from what was learned.
    warm_start: list[str] = Field(default_factory=list, max_length=32)

    @field_validator("warm_start")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not NAME_RE.match(n)]
        if bad:
            raise ValueError(f"warm_start names sweeps (1-64 safe characters), but got {bad[0]!r}")
        return v

    @field_validator("sampler")
    @classmethod
    def _known(cls, v: str) -> str:
        SAMPLERS.get(v)
        return v


class SchedulerSpec(_Strict):
    """Trial scheduler (``sweeps.searchers.SCHEDULERS``); one iteration = one epoch.

    ``grace_period`` (epochs a trial runs before it may be stopped) defaults to the first
    milestone of a multistep LR schedule, else 1: before its first LR decay a trial's
    validation metric says little about where it ends. ``max_t`` is the epochs: a trial
    stopped before them counts as stopped early, so a smaller one would leave no best.
    ``brackets``: ASHA's, 1 by default; HyperBand's (asynchronous: ASHA over several
    brackets, ``sweeps/searchers.py``) default to every bracket whose first rung,
    ``grace_period * reduction_factor**s``, is within ``max_t``.
    """

    name: str = "asha"
    grace_period: int | None = Field(None, ge=1)
    reduction_factor: float = Field(3, gt=1)
    brackets: int | None = Field(None, ge=1, le=MAX_BRACKETS)  # None: 1 (ASHA), all (HyperBand)
    max_t: int | None = Field(None, ge=1, le=MAX_EPOCHS)  # epochs; None: train.epochs

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        SCHEDULERS.get(v)
        return v


class ResourcesSpec(_Strict):
    """Per trial; fractional GPUs pack several trials on one device."""

    cpu: float = Field(1, gt=0, le=1024)
    gpu: float = Field(0, ge=0, le=64)

    @field_validator("gpu")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu above 1 must be a whole number, but got gpu={v}")
        return v


class FailureSpec(_Strict):
    """What happens when trials fail."""

    # Retries per trial from its last checkpoint; -1 = forever.
    max_failures: int = Field(2, ge=-1, le=100)
    fail_fast: bool = False  # stop the whole sweep at the first trial error
    # Metric value reported for a trial whose loss turned NaN/Inf, so the searcher learns the
    # region is bad. None: 0.0 for mode max, 1e9 for mode min.
    diverged_value: float | None = None


class FinalistsSpec(_Strict):
    """The confirmation stage after the search (``top_k: 0`` turns it off).

    The ``top_k`` best distinct configs by the search metric are re-trained for the full
    epoch budget with ``seeds`` fresh training seeds (no early stopping), and so is the
    baseline (the same spec with the perturbation off: ERM, or plain PGD-AT for AWP) with the
    same seeds. The winner is the finalist with the best mean validation metric; its test
    metric is then reported against the baseline's, never used to choose.
    """

    top_k: int = Field(3, ge=0, le=MAX_FINALISTS)
    seeds: int = Field(3, ge=1, le=MAX_SEEDS)
    baseline: bool = True


#: Tracking-store schemes MLflow 3 takes (its store registry), besides plugins' own.
_TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https")
_TRACKING_OTHER = ("databricks", "databricks-uc", "uc")
#: Optuna's RDB storages (SQLAlchemy dialects, optionally ``+driver``).
_OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")
#: Filesystems pyarrow opens itself (Ray Tune's storage); fsspec's are taken too.
_ARROW_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def _scheme(uri: str) -> str:
    """A URI's scheme, lower case, without a ``+driver``; "" for a plain path."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def _check_schemes(
    tracking: str | None, optuna: str | None, storage: str | None, env_storage: str | None
) -> None:
    """Refuse, when the spec is loaded, a URI no store here can open: it failed at run time
    instead, with a traceback, after the tracking database was made or Ray had started."""
    if tracking and (s := _scheme(tracking)) not in ("", *_TRACKING_SCHEMES, *_TRACKING_OTHER):
        from importlib.metadata import entry_points

        if s not in {e.name for e in entry_points(group="mlflow.tracking_store")}:
            raise ValueError(
                f"tracking_uri: scheme {s!r} is not a tracking store MLflow knows; allowed: "
                f"a path, {', '.join(_TRACKING_SCHEMES)} (or a plugin's)"
            )
    if optuna and (s := _scheme(optuna)) not in _OPTUNA_SCHEMES:
        raise ValueError(
            f"searcher.storage: scheme {s!r} is not an Optuna RDB storage; allowed: "
            f"{', '.join(_OPTUNA_SCHEMES)} (optionally +driver)"
        )
    for field_name, uri in (("storage_path", storage), ("FLATSWEEP_STORAGE", env_storage)):
        if not uri or (s := _scheme(uri)) in ("", *_ARROW_SCHEMES):
            continue
        try:
            from fsspec.registry import known_implementations
        except ImportError:  # no fsspec here: Ray says at run time
            continue
        if s not in known_implementations:
            raise ValueError(
                f"{field_name}: scheme {s!r} is not a filesystem pyarrow or fsspec knows; "
                f"allowed: a path, {', '.join(_ARROW_SCHEMES)} (or another fsspec protocol)"
            )


class SweepSpec(_Strict):
    """A whole sweep: the base TrainSpec, what to search, how, and where results go."""

    name: str
    train: TrainSpec
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(16, ge=1, le=MAX_TRIALS)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_CONCURRENT)  # None: what fits
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metric: str | list[str] = "val_acc"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    # Selecting on the test set makes the reported "best" the winner's curse of that set;
    # allowed only when a user says so, and recorded on the parent run as a tag.
    allow_test_selection: bool = False
    finalists: FinalistsSpec = Field(default_factory=FinalistsSpec)
    storage_path: str | None = None  # Tune results; else $FLATSWEEP_STORAGE, else ./.flatsweep
    tracking_uri: str | None = None  # else $MLFLOW_TRACKING_URI, else sqlite:///flatsweep.db
    failure: FailureSpec = Field(default_factory=FailureSpec)
    # Trial checkpoints at most this often (seconds) and after the last epoch; a restored
    # trial loses at most this much work. 0 = every epoch.
    checkpoint_every_s: float = Field(10.0, ge=0, le=86_400)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The name becomes a directory, a Ray job id and an MLflow experiment: keep it inert.
        if not NAME_RE.match(v):
            raise ValueError(
                f"name must be 1-64 characters of letters, digits, '_', '.', '-' starting with "
                f"a letter or digit, but got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.train.epochs > MAX_EPOCHS:
            raise ValueError(
                f"train.epochs must be <= {MAX_EPOCHS} in a sweep, but got {self.train.epochs}"
            )
        m = self.scheduler.max_t
        if m is not None and m != self.train.epochs:
            # Below the epochs every trial is stopped at max_t and recorded as stopped early
            # (no best); above them no trial ever reaches it.
            raise ValueError(
                f"scheduler.max_t must equal train.epochs ({self.train.epochs}), but got {m}; "
                f"drop it (it defaults to train.epochs)"
            )
        self._resolve_space()
        self._check_objectives()
        env_storage = None if self.storage_path else os.environ.get("FLATSWEEP_STORAGE")
        for field_name, uri in (
            ("tracking_uri", self.tracking_uri),
            ("searcher.storage", self.searcher.storage),
            ("storage_path", self.storage_path),
            ("FLATSWEEP_STORAGE", env_storage),
        ):
            try:
                carries = bool(uri) and password_in(uri)
            except ValueError as e:  # urlsplit: "Invalid IPv6 URL" names no field
                raise ValueError(f"{field_name}: {uri!r} is not a valid URI ({e})") from None
            if carries:
                # The spec is stored with the sweep (sweep.yaml, a parent run's artifact) and
                # staged with a submitted job: a secret in it would be in both.
                where = (
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the cloud's own credentials "
                    "(object storage)"
                    if field_name in ("storage_path", "FLATSWEEP_STORAGE")
                    else "MLFLOW_TRACKING_PASSWORD (an MLflow server) or PGPASSWORD / "
                    "~/.pgpass (PostgreSQL)"
                )
                raise ValueError(
                    f"{field_name}: it carries a password, which would be stored with the "
                    f"sweep and sent with a submitted job; drop it and give it as {where}"
                )
        _check_schemes(self.tracking_uri, self.searcher.storage, self.storage_path, env_storage)
        return self

    def _resolve_space(self) -> None:
        kind = self.train.perturbation.kind
        adaptive = bool(getattr(self.train.perturbation, "adaptive", False))
        default = search_spaces.space_for_kind(kind, adaptive=adaptive)
        if self.space.name is None:
            self.space.name = default
        else:
            searched = search_spaces.SPACES.get(self.space.name).kind
            if searched != kind:
                raise ValueError(
                    f"space.name {self.space.name!r} searches perturbation kind {searched!r}, "
                    f"but train.perturbation.kind is {kind!r}; drop space.name (it follows the "
                    f"kind) or make them agree"
                )
        search_spaces.resolve(self.space.name, self.space.ranges, self.space.optimizer)

    def _check_objectives(self) -> None:
        metrics, modes = self.metrics, self.modes
        if not metrics:
            raise ValueError("metric: give at least one metric, e.g. val_acc")
        if len(metrics) != len(modes):
            raise ValueError(
                f"metric and mode must have the same length, but got {len(metrics)} metrics "
                f"and {len(modes)} modes"
            )
        reported = EPOCH_METRICS | FINAL_METRICS
        for m in metrics:
            if m not in reported:
                allowed = ", ".join(sorted(EPOCH_METRICS))
                raise ValueError(f"metric {m!r} is not reported by trials; allowed: {allowed}")
            # Test-set metrics only: a run's compute (closure_passes_total) is no selection
            # on the test set, and a cost objective beside val_acc is a Pareto search.
            if m in TEST_METRICS and not self.allow_test_selection:
                val = {v for v in EPOCH_METRICS if test_metric_for(v) == m}
                use = f"; use {sorted(val)[0]!r}" if val else ""
                raise ValueError(
                    f"metric {m!r} selects on the test set, whose number would then be the "
                    f"winner's curse of that set{use} (or set allow_test_selection: true)"
                )
            if "robust" in m and self.train.adversarial is None:
                raise ValueError(f"metric {m!r} needs train.adversarial (PGD) to be set")
            d = self.train.data
            if m.startswith("val_") and not (d.num_val or d.val_fraction > 0):
                raise ValueError(
                    f"metric {m!r} needs a validation split, but train.data.val_fraction is 0"
                )
        primary = metrics[0]
        if self.finalists.top_k and not test_metric_for(primary):
            # The verdict picks the winner by this metric over the confirmation seeds and then
            # compares it with the baseline on its test counterpart; without one (a test
            # metric itself, allow_test_selection or not) it would compare the very numbers it
            # picked by (the winner's curse again).
            held_out = ", ".join(sorted(v for v in EPOCH_METRICS if test_metric_for(v)))
            what = (
                "is the test set's own, so the finalists' verdict would compare the numbers it "
                "picked the winner by"
                if primary in TEST_METRICS
                else "has no test-set counterpart for the finalists' verdict"
            )
            raise ValueError(
                f"metric {primary!r} {what}; put one of {held_out} first, or set finalists.top_k: 0"
            )
        if len(metrics) > 1 and not SAMPLERS.get(self.searcher.sampler).multi_objective:
            multi = ", ".join(n for n in SAMPLERS.names() if SAMPLERS.get(n).multi_objective)
            raise ValueError(
                f"searcher.sampler {self.searcher.sampler!r} is single-objective; "
                f"allowed for several metrics: {multi}"
            )
        if self.searcher.max_history is not None and (
            self.searcher.sampler != "tpe" or len(metrics) > 1
        ):
            # Only single-objective TPE has a history to bound (sweeps/bounded_tpe.py): a
            # setting that would do nothing is refused rather than ignored.
            raise ValueError(
                "searcher.max_history bounds single-objective TPE only, but the sweep has "
                f"sampler {self.searcher.sampler!r} and {len(metrics)} metric(s); remove it"
            )

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]

    @property
    def primary(self) -> tuple[str, str]:
        """The metric and mode the scheduler and export rank by (the first objective)."""
        return self.metrics[0], self.modes[0]

    @property
    def space_name(self) -> str:
        """The search space, resolved from the perturbation kind when the spec names none."""
        assert self.space.name is not None  # set by validation
        return self.space.name

    @property
    def first_milestone(self) -> int | None:
        """The epoch of the LR schedule's first decay (multistep), else None."""
        s = self.train.schedule
        return min(s.milestones) if s.name == "multistep" and s.milestones else None

    @property
    def grace_period(self) -> int:
        """Epochs before the scheduler may stop a trial (see ``SchedulerSpec``)."""
        if self.scheduler.grace_period is not None:
            return self.scheduler.grace_period
        return self.first_milestone or 1

    def warnings(self) -> list[str]:
        """Things that are allowed but probably not meant; the CLI prints each on one line."""
        out = []
        first = self.first_milestone
        g = self.scheduler.grace_period
        early = SCHEDULERS.get(self.scheduler.name).early_stopping
        if early and first is not None and g is not None and g < first:
            out.append(
                f"scheduler.grace_period {g} is before the LR schedule's first decay (epoch "
                f"{first}): trials are judged before the decay that decides where they end; "
                f"drop grace_period to default to {first}"
            )
        return out

    @property
    def diverged_value(self) -> float:
        if self.failure.diverged_value is not None:
            return self.failure.diverged_value
        return 0.0 if self.primary[1] == "max" else 1e9

    def resolved_storage(self) -> str:
        raw = self.storage_path or os.environ.get("FLATSWEEP_STORAGE") or ".flatsweep/ray_results"
        return raw if "://" in raw else str(Path(raw).expanduser().resolve())

    def resolved_tracking_uri(self) -> str:
        return resolve_tracking_uri(self.tracking_uri)

    def optuna_storage_url(self) -> str | None:
        """Where the Optuna study is stored (see ``SearcherSpec.storage``), or None."""
        if self.searcher.storage:
            return self.searcher.storage
        if os.environ.get("FLATSWEEP_OPTUNA_STORAGE"):
            return os.environ["FLATSWEEP_OPTUNA_STORAGE"]
        uri = self.resolved_tracking_uri()
        if (path := sqlite_path(uri)) is not None:
            db = Path(path)
            return f"sqlite:///{db.with_name(db.stem + '.optuna.db')}"
        return None

    def ranges(self) -> search_spaces.Ranges:
        return search_spaces.resolve(self.space_name, self.space.ranges, self.space.optimizer)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI: given, else ``$MLFLOW_TRACKING_URI``, else ``./flatsweep.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"


def train_spec_for(spec: SweepSpec, point: dict[str, Any]) -> TrainSpec:
    """The TrainSpec a trial with searched values ``point`` runs."""
    return spec.train.with_overrides(point)


def _corners(ranges: search_spaces.Ranges) -> list[dict[str, Any]]:
    keys = list(ranges)
    out = []
    for combo in itertools.product(*[(r.low, r.high) for r in ranges.values()]):
        out.append(
            {k: (int(v) if ranges[k].integer else v) for k, v in zip(keys, combo, strict=True)}
        )
    return out[:64]


def check_space(spec: SweepSpec, samples: int = 64) -> None:
    """Every sampled point (and the ranges' corners) must merge into a valid TrainSpec."""
    ranges = spec.ranges()
    fn = search_spaces.define_by_run(spec.space_name, ranges)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(samples):
        trial = study.ask()
        fixed = fn(trial)
        points.append({**trial.params, **fixed})
    fixed_probe = points[0] if points else {}
    constants = {k: v for k, v in fixed_probe.items() if k not in ranges}
    points += [{**c, **constants} for c in _corners(ranges)]
    for point in points:
        try:
            train_spec_for(spec, point)
        except (ValidationError, ValueError) as e:
            where = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(point.items())
            )
            raise SpecError(
                f"space: a sampled point is not a valid TrainSpec ({where}): "
                f"{format_validation_error(e, TrainSpec)}"
            ) from None


def load_spec(path: str | Path, *, check_files: bool = True) -> SweepSpec:
    """Read and fully validate a sweep spec; raise ``SpecError`` with a one-line message."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        raw = load_yaml(p)
    except ValueError as e:
        raise SpecError(f"{p.name}: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p.name}: a sweep spec is a mapping with keys name, train, space, ...")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, SweepSpec)) from None
    except ValueError as e:
        raise SpecError(str(e)) from None
    if check_files:
        try:
            check_data(spec.train.data)
        except ValueError as e:
            raise SpecError(f"train.data.root: {e}") from None
    check_space(spec)
    return spec


def with_name(spec: SweepSpec, name: str) -> SweepSpec:
    """``spec`` renamed (``--name``), the name checked by the same rule as a spec's own."""
    try:
        return SweepSpec.model_validate({**spec.model_dump(mode="json"), "name": name})
    except ValidationError as e:
        raise SpecError(
            f"--name: {format_validation_error(e, SweepSpec).removeprefix('name: ')}"
        ) from None


def smoke_name(name: str) -> str:
    """A smoke test's own sweep name, so it never blocks the real run of ``name``."""
    return f"{name[:58]}-smoke"


def smoke(spec: SweepSpec) -> SweepSpec:
    """``--smoke-test``: the same sweep shrunk to 2 trials of 1 epoch (Ray examples' convention),
    under its own name ``NAME-smoke``, so the real sweep can run afterwards."""
    train = spec.train.model_copy(update={"epochs": 1})
    if train.schedule.name == "multistep":
        train = train.model_copy(
            update={"schedule": train.schedule.model_copy(update={"milestones": []})}
        )
    update: dict[str, Any] = {"num_samples": 2, "train": train, "name": smoke_name(spec.name)}
    if spec.scheduler.max_t is not None:  # max_t is the epochs (SweepSpec validation)
        update["scheduler"] = spec.scheduler.model_copy(update={"max_t": 1})
    return spec.model_copy(update=update)


def as_run(spec: SweepSpec, *, name: str | None = None, smoke_test: bool = False) -> SweepSpec:
    """The sweep that ``sweeps run|submit SPEC [--name NAME] [--smoke-test]`` runs: renamed
    first, then shrunk to a smoke test under its own name (``NAME-smoke``). Raises
    ``SpecError`` naming ``--name`` for a bad name."""
    if name is not None:
        spec = with_name(spec, name)
    return smoke(spec) if smoke_test else spec
