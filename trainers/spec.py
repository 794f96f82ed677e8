"""``TrainSpec``: the one typed, strict description of a training run.

Every key has one name everywhere (YAML, Optuna, MLflow params, Python keywords), unknown keys
are refused, and the resolved spec is saved inside every checkpoint, as nanoGPT saves its config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from trainers._registry import closest, unknown_message
from trainers._yaml import load_yaml
from trainers.data import DataSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """A model from the ``trainers.models`` registry and its keyword arguments."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from trainers.models import MODELS

        if v not in MODELS:
            raise ValueError(unknown_message("model", v, MODELS.names()))
        return v


class OptimSpec(_Strict):
    """SGD with momentum, as in both papers."""

    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate, per batch of ``batch_size``
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)  # L2 coefficient, applied by the optimizer at w
    # Gradient-norm clipping inside every closure call (the AMP official code clips at 50).
    grad_clip_norm: float | None = Field(None, gt=0)


class ScheduleSpec(_Strict):
    """Learning-rate schedule, evaluated per iteration from the fractional epoch."""

    name: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # epochs, for multistep
    gamma: float = Field(0.1, gt=0, le=1)  # multistep decay factor per milestone
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up from 0, in epochs


class PerturbationSpec(_Strict):
    """The regularizer; hyperparameters are checked by building it on a one-weight model."""

    kind: str = "erm"
    radius: float | None = None  # SAM rho, AMP epsilon, AWP gamma
    inner_steps: int | None = None  # AMP/AWP, >= 1
    inner_lr: float | None = None  # AMP/AWP
    adaptive: bool | None = None  # SAM only: ASAM
    warmup_epochs: int = Field(0, ge=0)  # plain ERM steps for this many epochs first (AWP's)

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters that were set, as keywords for ``perturbations.build``."""
        keys = ("radius", "inner_steps", "inner_lr", "adaptive")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    @model_validator(mode="after")
    def _buildable(self) -> PerturbationSpec:
        from trainers.perturbations import build

        build(self.kind, nn.Linear(1, 1), **self.hparams())
        return self


class AdversarialSpec(_Strict):
    """L∞ PGD adversarial training (Madry et al. 2018) as in the AWP official code.

    Budgets are in pixel units of [0, 1] images (8/255 is 0.0314); for inputs that are not
    images (MNIST-1D, synthetic) they are in input units.
    """

    eps: float = Field(8 / 255, ge=0)
    steps: int = Field(10, ge=1)  # attack steps for training, with a random start
    step_size: float = Field(2 / 255, gt=0)
    eval_steps: int = Field(20, ge=1)  # PGD-20 robust accuracy
    eval_examples: int | None = Field(1000, ge=1)  # test examples attacked per eval; None = all


class TrainSpec(_Strict):
    """Everything one training run needs; ``python -m trainers FILE`` runs one."""

    model: ModelSpec
    data: DataSpec
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    perturbation: PerturbationSpec = Field(default_factory=PerturbationSpec)
    # PGD-AT; AWP is defined on adversarial batches, so ``kind: awp`` turns it on by default.
    adversarial: AdversarialSpec | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    # CPU threads for torch; None leaves torch's default. CPU results depend on the thread
    # count, so a sweep records its trials' count here and an exported config reproduces it.
    num_threads: int | None = Field(None, ge=1)
    # Where an exported config came from (sweep, trial, run id, metric); fit() ignores it.
    provenance: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainSpec:
        if self.perturbation.kind == "awp" and self.adversarial is None:
            self.__dict__["adversarial"] = AdversarialSpec()
        if self.schedule.name == "multistep":
            bad = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
            if bad:
                raise ValueError(
                    f"schedule.milestones must lie in 1..{self.epochs - 1} (epochs={self.epochs}),"
                    f" but got {bad}"
                )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainSpec:
        """Read a spec file with the strict safe loader (duplicate keys refused, 1e-3 a float)."""
        return cls.model_validate(load_yaml(Path(path)))


def _fields_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that ``loc`` points into, for "did you mean" hints."""
    import typing

    for part in loc:
        if model is None:
            return []
        f = model.model_fields.get(str(part))
        if f is None:
            continue  # list index or dict key: stay on the same model
        candidates = [f.annotation, *typing.get_args(f.annotation)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return list(model.model_fields) if model is not None else []


def format_validation_error(err: Exception, model: type[BaseModel] | None = None) -> str:
    """One line naming the first failing field (dotted path), why, and what is allowed."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        fields = _fields_at(model or TrainSpec, first["loc"][:-1])
        hint = closest(str(first["loc"][-1]), fields) if fields else None
        msg = "unknown key" + (f"; did you mean {hint!r}?" if hint else "")
        if fields:
            msg += f" (allowed: {', '.join(fields)})"
    if first["type"] == "literal_error":
        msg = msg.replace("Input should be", "allowed:")
    text = f"{loc}: {msg}" if loc else msg
    extra = len(err.errors()) - 1
    return text + (f" (and {extra} more)" if extra else "")
