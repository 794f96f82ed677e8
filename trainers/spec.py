"""``TrainSpec``: the one typed, strict description of a training run.

Every key has one name everywhere (YAML, Optuna, MLflow params, Python keywords), unknown keys
are refused, and the resolved spec is saved inside every checkpoint, as nanoGPT saves its config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainers._yaml import load_yaml
from trainers.data import DataSpec
from trainers.registry import closest, unknown_message


class _Strict(BaseModel):
    # No infinite or NaN number anywhere in a spec (``lr: .inf`` trained to NaN): one line.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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

    @model_validator(mode="after")
    def _known_args(self) -> ModelSpec:
        from trainers.models import option_names

        allowed = option_names(self.name)
        for key in self.args:
            if key not in allowed:
                raise ValueError(
                    unknown_message(f"{self.name} argument", key, allowed or ["(none)"])
                )
        return self


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


BNUpdate = Literal["first_pass", "all_passes"]
# Hyperparameter types, strict so that "0.05", true or 2.0 are refused rather than coerced.
_Radius = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
# Bounds that keep a typo from running a trial for days: the papers take 1-10 inner steps
# (each one closure pass more per step), and PGD-1000 is already a heavy evaluation.
MAX_INNER_STEPS, MAX_ATTACK_STEPS, MAX_BATCH = 100, 1000, 65_536
_Steps = Annotated[int, Field(ge=1, le=MAX_INNER_STEPS, strict=True)]
_InnerLR = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


class BasePerturbationSpec(_Strict):
    """Fields every perturbation kind has; semantics in ``docs/algorithms.md``."""

    kind: str
    warmup_epochs: int = Field(0, ge=0)  # plain ERM steps for this many epochs first (AWP's)
    # BatchNorm running statistics: "first_pass" keeps those of the unperturbed pass only (what
    # plain training would give); "all_passes" lets every closure call update them, the last at
    # the perturbed weights, as the official AMP optimizer does.
    bn_update: BNUpdate = "first_pass"


class ERMSpec(BasePerturbationSpec):
    """Plain training: no hyperparameters."""

    kind: Literal["erm"] = "erm"


class SAMSpec(BasePerturbationSpec):
    """SAM (Foret et al., ICLR 2021); ``adaptive`` gives ASAM (Kwon et al., ICML 2021)."""

    kind: Literal["sam"] = "sam"
    radius: _Radius = 0.05  # rho: global L2 norm of the ascent step (paper default 0.05)
    adaptive: bool = Field(False, strict=True)  # ASAM: ascent scaled elementwise by |w|


class AMPSpec(BasePerturbationSpec):
    """AMP (Zheng, Zhang, Mao, CVPR 2021); defaults from the paper and official code."""

    kind: Literal["amp"] = "amp"
    radius: _Radius = 0.5  # epsilon: L2 ball per parameter tensor (paper default 0.5)
    inner_steps: _Steps = 1  # ascent steps (official inner_iter, default 1)
    inner_lr: _InnerLR = 1.0  # ascent step size, multiplies the gradient (official default 1)


class AWPSpec(BasePerturbationSpec):
    """AWP (Wu, Xia, Wang, NeurIPS 2020); defaults from the official PGD-AT script."""

    kind: Literal["awp"] = "awp"
    radius: _Radius = 0.01  # gamma: size relative to each layer's weight norm (official 0.01)
    # Proxy ascent steps. The paper and official code take one; K >= 2 is this project's
    # extension, with no reference to compare against.
    inner_steps: _Steps = 1
    inner_lr: _InnerLR = 0.01  # proxy SGD step (official 0.01); cancels out of v when K = 1


#: kind -> its spec model; ``trainers.perturbations.PERTURBATIONS`` has the same kinds.
PERTURBATION_SPECS: dict[str, type[BasePerturbationSpec]] = {
    c.model_fields["kind"].default: c for c in (ERMSpec, SAMSpec, AMPSpec, AWPSpec)
}


def _default_kind(value: Any) -> Any:
    """A mapping without ``kind`` is ERM; an unknown kind is named with the closest one."""
    if isinstance(value, Mapping):
        kind = value.get("kind", "erm")
        if not isinstance(kind, str) or kind not in PERTURBATION_SPECS:
            raise ValueError(unknown_message("perturbation kind", kind, list(PERTURBATION_SPECS)))
        return {**value, "kind": kind}
    return value


#: The regularizer: one spec model per ``kind``, each with its own fields, bounds and defaults.
PerturbationSpec = Annotated[
    ERMSpec | SAMSpec | AMPSpec | AWPSpec,
    Field(discriminator="kind"),
    BeforeValidator(_default_kind),
]


class _PerturbationOnly(_Strict):
    perturbation: PerturbationSpec


def parse_perturbation(data: Mapping[str, Any]) -> PerturbationSpec:
    """Validate a perturbation spec on its own; errors are one line ("perturbation.radius: ...")."""
    try:
        return _PerturbationOnly(perturbation=data).perturbation
    except ValidationError as e:
        raise ValueError(format_validation_error(e, _PerturbationOnly)) from None


class AdversarialSpec(_Strict):
    """L∞ PGD adversarial training (Madry et al. 2018) as in the AWP official code.

    Budgets are in pixel units of [0, 1] images (8/255 is 0.0314); for inputs that are not
    images (MNIST-1D, synthetic) they are in input units. The test robust accuracy is PGD
    (``eval_steps``) on the whole test set, once after the last epoch, in fp32, as the AWP
    paper reports it; the per-epoch validation robust accuracy attacks only the first
    ``eval_examples`` validation examples, to stay cheap.

    ``autoattack`` adds ``test_autoattack_acc``: standard L∞ AutoAttack at ``eps`` (Croce &
    Hein 2020, the RobustBench evaluation; ``trainers.attacks.autoattack_accuracy``) of the
    final weights, once after the last epoch, in fp32. Image datasets only (cifar10, cifar100,
    svhn); ``fit`` refuses it for the others before training.
    """

    eps: float = Field(8 / 255, ge=0)
    steps: int = Field(10, ge=1, le=MAX_ATTACK_STEPS)  # training attack, random start
    step_size: float = Field(2 / 255, gt=0)
    eval_steps: int = Field(20, ge=1, le=MAX_ATTACK_STEPS)  # PGD-20 robust accuracy
    # Validation examples attacked per epoch; None = all. The test set is always attacked whole.
    eval_examples: int | None = Field(1000, ge=1)
    # Precision of the robust evaluations: fp32 (the AWP official evaluation) or the training
    # precision ("train"), cheaper on GPUs but not the paper's protocol.
    eval_precision: Literal["fp32", "train"] = "fp32"
    # AutoAttack of the final weights on the test set (test_autoattack_acc); off by default as
    # it is slow: about 2,000 forward-backward passes per robust example.
    autoattack: bool = False
    # Test examples AutoAttack evaluates (the first N); None = the whole test set.
    autoattack_examples: int | None = Field(None, ge=1)


class TrainSpec(_Strict):
    """Everything one training run needs; ``python -m trainers FILE`` runs one."""

    model: ModelSpec
    data: DataSpec
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    perturbation: PerturbationSpec = Field(default_factory=ERMSpec)
    # PGD-AT; AWP is defined on adversarial batches, so ``kind: awp`` turns it on by default.
    adversarial: AdversarialSpec | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, le=MAX_BATCH)
    eval_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    seed: int = Field(0, ge=0, lt=2**32)  # torch and numpy generators both take it
    deterministic: bool = False
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", "mps"
    # CPU threads for torch; None leaves torch's default. CPU results depend on the thread
    # count, so a sweep records its trials' count here and an exported config reproduces it.
    num_threads: int | None = Field(None, ge=1, le=4096)
    # Where an exported config came from (sweep, trial, run id, metric); fit() ignores it.
    provenance: dict[str, Any] | None = None
    # Keep the weights of the best validation epoch (by val_robust_acc with PGD, as the AWP
    # official code, else val_acc) and also report their test metrics (test_acc_at_best_val,
    # ...) after the last epoch; needs a validation split.
    test_at_best_val: bool = False
    # Diagnostic: measure the top Hessian eigenvalue of the final weights on a fixed batch of
    # the validation split (``diag.hessian_lmax``, after the last epoch). Never an objective.
    hessian_lmax: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        # Checked here, where PyTorch is not loaded, rather than by torch.device in a trial.
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, but got {v!r}")
        return v

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

    def with_overrides(self, point: Mapping[str, Any]) -> TrainSpec:
        """A new spec with the dotted keys of ``point`` set, validated; ``self`` is unchanged.

        Keys are the spec's dotted names, as a search space, Tune and MLflow use them
        (``"optim.lr"``, ``"perturbation.radius"``, ``"model.args.width"``). An unset optional
        section (``adversarial``) starts from its defaults. A ``perturbation.kind`` different
        from the current one starts from that kind's defaults, keeping only the fields every
        kind has (``warmup_epochs``, ``bn_update``): one kind's radius means nothing to another.

        Raises:
            ValueError: one line naming the first bad key ("optim.lrr: unknown key; did you
                mean 'lr'?") or value.

        Example:
            >>> spec.with_overrides({"perturbation.kind": "sam", "perturbation.radius": 0.1})
        """
        data = self.model_dump()
        kind = point.get("perturbation.kind")
        if kind is not None and kind != self.perturbation.kind:
            common = BasePerturbationSpec.model_fields
            data["perturbation"] = {k: v for k, v in data["perturbation"].items() if k in common}
        for dotted, value in point.items():
            *parents, leaf = dotted.split(".")
            node = data
            for i, key in enumerate(parents):
                if node.get(key) is None:
                    node[key] = {}
                node = node[key]
                if not isinstance(node, dict):
                    where = ".".join(parents[: i + 1])
                    raise ValueError(f"{dotted}: unknown key ({where} is a value, not a section)")
            node[leaf] = value
        try:
            return type(self).model_validate(data)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, type(self))) from None


def _walk(
    model: type[BaseModel] | None, loc: tuple[Any, ...]
) -> tuple[list[str], type[BaseModel] | None, str | None]:
    """Follow ``loc`` through nested models: the dotted path to show, the model it ends in, and
    the discriminator value picked on the way (pydantic puts it in ``loc``; it is not a key).
    """
    import typing

    shown: list[str] = []
    tags: dict[str, type[BaseModel]] = {}  # discriminator value -> member, after a union field
    tag = None
    for part in loc:
        pending, tags = tags, {}
        if str(part) in pending:
            model, tag = pending[str(part)], str(part)
            continue
        # A key that is not printable text (a line break in it) is quoted: the message stays
        # one line, and a spec cannot make it print lines of its own.
        shown.append(str(part) if str(part).isprintable() else repr(str(part)))
        f = model.model_fields.get(str(part)) if model is not None else None
        if f is None:
            continue  # list index or dict key: stay on the same model
        members = [
            c
            for c in (f.annotation, *typing.get_args(f.annotation))
            if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        model, tag = (members[0] if members else None), None
        if isinstance(f.discriminator, str) and len(members) > 1:
            tags = {m.model_fields[f.discriminator].default: m for m in members}
    return shown, model, tag


def format_validation_error(err: Exception, model: type[BaseModel] | None = None) -> str:
    """One line naming the first failing field (dotted path), why, and what is allowed."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    first = err.errors()[0]
    shown, _, _ = _walk(model or TrainSpec, first["loc"])
    loc = ".".join(shown)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        _, parent, tag = _walk(model or TrainSpec, first["loc"][:-1])
        fields = list(parent.model_fields) if parent is not None else []
        hint = closest(str(first["loc"][-1]), fields) if fields else None
        msg = "unknown key" + (f" for kind {tag!r}" if tag else "")
        msg += f"; did you mean {hint!r}?" if hint else ""
        if fields:
            msg += f" (allowed: {', '.join(fields)})"
    value = first.get("input")
    if msg.startswith("Input should be") and isinstance(value, str | int | float):
        msg += f", but got {value!r}"  # pydantic's own constraint messages omit the value
    if first["type"] == "literal_error":
        msg = msg.replace("Input should be", "allowed:")
    text = f"{loc}: {msg}" if loc else msg
    extra = len(err.errors()) - 1
    return text + (f" (and {extra} more)" if extra else "")
