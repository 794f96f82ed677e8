"""Tests for ``trainers.attacks``: PGD in every precision, the AutoAttack evaluation and its
``fit`` option.

A model whose robustness is known exactly (it thresholds the mean pixel, so an L∞ budget
``eps`` moves its score by exactly ``eps``) tells whether the budget is in pixel units and the
normalisation is undone and redone right. Tests that run the attacks shrink torchattacks'
budgets (``small_budgets``) to stay in seconds; the standard budgets are checked where the
attack is built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.trainers.test_data import write_cifar10
from trainers import attacks, fit, loop
from trainers.attacks import _project, autoattack_accuracy, build_autoattack, pgd
from trainers.spec import TrainSpec

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's, as the loaders normalise
STD = (0.2471, 0.2435, 0.2616)
_M, _S = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


class _Brightness(nn.Module):
    """Class 1 iff the mean pixel exceeds 0.5, else class 0: robust exactly for
    eps < |mean pixel - 0.5|. Classes 2 and 3 never win; they are there because APGD-T's
    targeted DLR loss needs four logits.

    Takes normalised images (``pixels=False``, as the loop's models do) or [0, 1] pixels.
    """

    def __init__(self, pixels: bool = False) -> None:
        super().__init__()
        self.pixels = pixels
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pix = x if self.pixels else x * _S + _M
        s = self.scale * (pix.mean((1, 2, 3)) - 0.5)
        never = torch.full_like(s, -10.0)  # |s| <= 5 for pixels in [0, 1]
        return torch.stack([-s, s, never, never], 1)


def _images(pixels: list[float]) -> torch.Tensor:
    """Normalised 3x4x4 images, each of one constant pixel value."""
    return (torch.tensor(pixels).view(-1, 1, 1, 1).expand(-1, 3, 4, 4) - _M) / _S


@pytest.fixture
def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attacks, "AUTOATTACK_STEPS", 5)
    monkeypatch.setattr(attacks, "AUTOATTACK_SQUARE_QUERIES", 20)


def _confident_cnn(x: torch.Tensor, scale: float) -> tuple[nn.Module, torch.Tensor]:
    """A small CNN and labels it predicts, its logits scaled up by ``scale`` (confidence)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
        model[-1].weight.mul_(scale)
        model[-1].bias.mul_(scale)
    return model, y


def _pgd_of_the_mean(model, x, y, *, eps, step_size, steps, mean, std):
    """PGD as it stood before the summed loss: the sign of the batch mean's gradient (the AWP
    official ``attack_pgd``), in normalised units, no random start."""
    shape = (1, -1, 1, 1)
    std, mean = std.view(shape), mean.view(shape)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    eps_t, alpha = eps / std, step_size / std
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta = _project(x, delta, eps_t, lo, hi).requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + alpha * grad.sign()
    return (x + _project(x, delta, eps_t, lo, hi)).detach()


_PGD = dict(eps=8 / 255, step_size=2 / 255, mean=_M.flatten(), std=_S.flatten())


def test_pgd_under_fp16_moves_confident_examples() -> None:
    """fp16 autocast without loss scaling: the batch mean's per-example gradients (p - y) / 128
    underflow for confident examples (p_max about 0.99999 here), sign 0, and PGD left every
    one of them where it was. The summed loss keeps them, as fp32 and bf16 do."""
    torch.manual_seed(1)
    x = (torch.rand(128, 3, 8, 8) - _M) / _S
    model, y = _confident_cnn(x, scale=80.0)
    moved = {}
    for precision in ("fp32", "bf16", "fp16"):
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
            x_adv = pgd(model, x, y, steps=2, random_start=False, **_PGD)
        moved[precision] = float(((x_adv - x).flatten(1).abs().amax(1) > 0).float().mean())
    assert moved == {"fp32": 1.0, "bf16": 1.0, "fp16": 1.0}


@pytest.mark.parametrize("batch", [16, 12])
@pytest.mark.parametrize("train_mode", [False, True])
def test_pgd_in_fp32_is_the_sign_of_the_mean_gradient(batch: int, train_mode: bool) -> None:
    """Summing instead of averaging scales the gradient by the batch size, which leaves its
    sign alone: fp32 PGD is the official attack's, bit for bit (also in train mode, where
    BatchNorm couples the examples, and for a batch that is not a power of two)."""
    torch.manual_seed(2)
    x = (torch.rand(batch, 3, 8, 8) - _M) / _S
    model, y = _confident_cnn(x, scale=1.0)
    model.train(train_mode)
    got = pgd(model, x, y, steps=3, random_start=False, **_PGD)
    expected = _pgd_of_the_mean(model, x, y, steps=3, **_PGD)
    assert torch.equal(got, expected)
    assert not torch.equal(got, x)


@pytest.mark.parametrize(("num_classes", "targets"), [(10, 9), (100, 9), (4, 3)])
def test_autoattack_has_robustbench_standard_budgets(num_classes: int, targets: int) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, num_classes))
    atk = build_autoattack(model, eps=8 / 255, num_classes=num_classes, seed=3)
    apgd_ce, apgd_t, fab_t, square = atk._autoattack.attacks
    assert (apgd_ce.loss, apgd_ce.n_restarts, apgd_ce.steps) == ("ce", 1, 100)
    assert (apgd_t.n_restarts, apgd_t.steps, apgd_t.n_target_classes) == (1, 100, targets)
    assert (fab_t.multi_targeted, fab_t.n_restarts, fab_t.steps) == (True, 1, 100)
    assert fab_t.n_target_classes == targets
    assert (square.n_queries, square.n_restarts, square.rescale_schedule) == (5000, 1, False)
    assert all(
        a.norm == "Linf" and a.eps == 8 / 255 and a.seed == 3 for a in atk._autoattack.attacks
    )


@pytest.mark.usefixtures("small_budgets")
def test_eps_is_in_pixel_units_and_only_clean_correct_examples_count() -> None:
    # Mean pixels 0.2 (class 0), 0.8 (class 1), and 0.2 labelled 1: misclassified when clean.
    x, y = _images([0.2, 0.8, 0.2]), torch.tensor([0, 1, 1])
    model = _Brightness()
    rng = torch.get_rng_state()
    kw = dict(num_classes=4, mean=MEAN, std=STD, seed=0)
    # Margin 0.3 in pixel units (about 1.2 in normalised units).
    assert autoattack_accuracy(model, [(x, y)], eps=0.25, **kw) == pytest.approx(2 / 3)
    assert autoattack_accuracy(model, [(x, y)], eps=0.35, **kw) == 0.0
    assert autoattack_accuracy(model, [(x, y)], eps=0.35, examples=1, **kw) == 0.0
    assert autoattack_accuracy(model, [(x, y)], eps=0.25, examples=1, **kw) == 1.0
    # The training stream, the parameters and the mode are left as they were (bar eval mode).
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.scale.requires_grad and model.scale.grad is None and not model.training


@pytest.mark.usefixtures("small_budgets")
def test_adversarial_pixels_stay_in_the_box() -> None:
    x = torch.tensor([0.05, 0.95]).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    y = torch.tensor([0, 1])
    x_adv = build_autoattack(_Brightness(pixels=True), eps=0.5, num_classes=4, seed=0)(x, y)
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.5 + 1e-6
    assert (x_adv != x).any()


def test_autoattack_needs_four_classes() -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 4 .*, but got 3"):
        build_autoattack(nn.Linear(2, 3), eps=0.1, num_classes=3, seed=0)


def test_autoattack_needs_normalised_images() -> None:
    x, y = torch.zeros(2, 40), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="per-channel mean and std"):
        autoattack_accuracy(_Brightness(), [(x, y)], eps=0.1, num_classes=4, mean=None, std=None)


@pytest.mark.usefixtures("small_budgets")
def test_fit_reports_autoattack_once_on_the_asked_test_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path, n_train=20, n_test=10)
    spec = TrainSpec.model_validate(
        {
            "model": {"name": "small_cnn", "args": {"channels": 4}},
            "data": {"name": "cifar10", "root": str(tmp_path)},
            "perturbation": {"kind": "awp"},
            "adversarial": {
                "steps": 1,
                "eval_steps": 1,
                "autoattack": True,
                "autoattack_examples": 8,
            },
            "epochs": 2,
            "batch_size": 6,
            "eval_batch_size": 3,
            "device": "cpu",
        }
    )
    real = attacks.build_autoattack
    clean: list[torch.Tensor] = []  # correctness of each attacked example before the attack

    def spy(model: nn.Module, **kw: object):
        atk = real(model, **kw)
        assert not model.training

        def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            assert 0 <= x.min() and x.max() <= 1  # de-normalised pixels
            with torch.no_grad():
                clean.append(model(x).argmax(1) == y)
            return atk(x, y)

        return attack

    monkeypatch.setattr(attacks, "build_autoattack", spy)
    history = fit(spec).history
    assert "test_autoattack_acc" in loop.FINAL_METRICS
    assert "test_autoattack_acc" not in history[0]
    assert [len(c) for c in clean] == [3, 3, 2]  # the first 8 of 10, in eval batches of 3
    aa = history[-1]["test_autoattack_acc"]
    assert 0.0 <= aa <= float(torch.cat(clean).float().mean()) + 1e-9


@pytest.mark.parametrize("dataset", ["mnist1d", "digits", "synthetic"])
def test_autoattack_is_refused_without_images_before_any_data(
    dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*a: object, **k: object) -> None:
        raise AssertionError("data was built before the spec was refused")

    monkeypatch.setattr(loop.data_lib, "build", no_data)
    spec = TrainSpec.model_validate(
        {
            "model": {"name": "mlp"},
            "data": {"name": dataset},
            "adversarial": {"autoattack": True},
            "device": "cpu",
        }
    )
    with pytest.raises(ValueError) as err:
        fit(spec)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("adversarial.autoattack needs an image dataset")
    assert f"data.name={dataset!r}" in msg and "cifar10" in msg


def test_autoattack_examples_must_be_positive() -> None:
    spec = TrainSpec.model_validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"}})
    with pytest.raises(ValueError, match=r"^adversarial\.autoattack_examples: .*"):
        spec.with_overrides({"adversarial.autoattack_examples": 0})
    on = spec.with_overrides({"adversarial.autoattack": True})
    assert on.adversarial.autoattack and on.adversarial.autoattack_examples is None
