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
from trainers._yaml import load_yaml
from trainers.data import check_data
from trainers.spec import TrainSpec, format_validation_error

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_TRACKING_DB = "flatsweep.db"


class SpecError(ValueError):
    """A sweep spec that cannot run; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpaceSpec(_Strict):
    """A registered search space, with optional ``[low, high]`` overrides per parameter."""

    name: str = "amp"
    ranges: dict[str, list[float]] = Field(default_factory=dict)
    optimizer: bool = False  # also search optim.lr and optim.weight_decay

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        search_spaces.SPACES.get(v)
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SpaceSpec:
        search_spaces.resolve(self.name, self.ranges, self.optimizer)
        return self


class SearcherSpec(_Strict):
    """Optuna sampler used by Ray Tune's ``OptunaSearch``."""

    sampler: Literal["tpe", "random", "cmaes", "nsga2", "gp"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int = Field(4, ge=0)  # TPE/GP: random trials before the model kicks in


class SchedulerSpec(_Strict):
    """Trial scheduler; ``max_t`` defaults to the TrainSpec's epochs (one iteration = one epoch)."""

    name: Literal["asha", "hyperband", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs a trial runs before ASHA may stop it
    reduction_factor: float = Field(3, gt=1)
    brackets: int = Field(1, ge=1)  # ASHA only
    max_t: int | None = Field(None, ge=1)  # epochs


class ResourcesSpec(_Strict):
    """Per trial; fractional GPUs pack several trials on one device."""

    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu above 1 must be a whole number, but got gpu={v}")
        return v


class FailureSpec(_Strict):
    """What happens when trials fail."""

    max_failures: int = Field(2, ge=-1)  # retries per trial from its last checkpoint; -1 = forever
    fail_fast: bool = False  # stop the whole sweep at the first trial error
    # Metric value reported for a trial whose loss turned NaN/Inf, so the searcher learns the
    # region is bad. None: 0.0 for mode max, 1e9 for mode min.
    diverged_value: float | None = None


class SweepSpec(_Strict):
    """A whole sweep: the base TrainSpec, what to search, how, and where results go."""

    name: str
    train: TrainSpec
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(16, ge=1)
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as the resources allow
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metric: str | list[str] = "test_acc"
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    storage_path: str | None = None  # Tune results; else $FLATSWEEP_STORAGE, else ./.flatsweep
    tracking_uri: str | None = None  # else $MLFLOW_TRACKING_URI, else sqlite:///flatsweep.db
    failure: FailureSpec = Field(default_factory=FailureSpec)
    # Trial checkpoints at most this often (seconds) and after the last epoch; a restored
    # trial loses at most this much work. 0 = every epoch.
    checkpoint_every_s: float = Field(10.0, ge=0)

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
    def _objectives(self) -> SweepSpec:
        metrics, modes = self.metrics, self.modes
        if len(metrics) != len(modes):
            raise ValueError(
                f"metric and mode must have the same length, but got {len(metrics)} metrics "
                f"and {len(modes)} modes"
            )
        from sweeps.trainable import REPORTED_METRICS

        for m in metrics:
            if m not in REPORTED_METRICS:
                allowed = ", ".join(sorted(REPORTED_METRICS))
                raise ValueError(f"metric {m!r} is not reported by trials; allowed: {allowed}")
        if "robust_acc" in metrics and self.train.adversarial is None:
            raise ValueError("metric 'robust_acc' needs train.adversarial (PGD) to be set")
        if len(metrics) > 1 and self.searcher.sampler in ("cmaes", "gp"):
            raise ValueError(
                f"searcher.sampler {self.searcher.sampler!r} is single-objective; "
                "allowed for several metrics: tpe, random, nsga2"
            )
        return self

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
    def diverged_value(self) -> float:
        if self.failure.diverged_value is not None:
            return self.failure.diverged_value
        return 0.0 if self.primary[1] == "max" else 1e9

    def resolved_storage(self) -> str:
        raw = self.storage_path or os.environ.get("FLATSWEEP_STORAGE") or ".flatsweep/ray_results"
        return raw if "://" in raw else str(Path(raw).expanduser().resolve())

    def resolved_tracking_uri(self) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or f"sqlite:///{Path(DEFAULT_TRACKING_DB).resolve()}"

    def ranges(self) -> search_spaces.Ranges:
        return search_spaces.resolve(self.space.name, self.space.ranges, self.space.optimizer)


def train_spec_for(spec: SweepSpec, point: dict[str, Any]) -> TrainSpec:
    """The TrainSpec a trial with searched values ``point`` runs."""
    return TrainSpec.model_validate(
        search_spaces.merge(spec.train.model_dump(mode="json"), point))


def _corners(ranges: search_spaces.Ranges) -> list[dict[str, Any]]:
    keys = list(ranges)
    out = []
    for combo in itertools.product(*[(r.low, r.high) for r in ranges.values()]):
        out.append({k: (int(v) if ranges[k].integer else v) for k, v in zip(keys, combo,
                                                                               strict=True)})
    return out[:64]


def check_space(spec: SweepSpec, samples: int = 64) -> None:
    """Every sampled point (and the ranges' corners) must merge into a valid TrainSpec."""
    ranges = spec.ranges()
    fn = search_spaces.define_by_run(spec.space.name, ranges)
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
        except ValidationError as e:
            where = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in sorted(point.items()))
            raise SpecError(f"space: a sampled point is not a valid TrainSpec ({where}): "
                            f"{format_validation_error(e, TrainSpec)}") from None


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


def smoke(spec: SweepSpec) -> SweepSpec:
    """``--smoke-test``: the same sweep shrunk to 2 trials of 1 epoch (Ray examples' convention)."""
    train = spec.train.model_copy(update={"epochs": 1})
    if train.schedule.name == "multistep":
        train = train.model_copy(update={"schedule": train.schedule.model_copy(
            update={"milestones": []})})
    return spec.model_copy(update={"num_samples": 2, "train": train})
