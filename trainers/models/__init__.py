"""Models by name: the CIFAR networks of the AMP, AWP and SAM papers plus small CPU-sized ones.

``build(name, num_classes=..., in_shape=...)`` is the one entry point; names come from ``MODELS``.
Every factory takes ``(num_classes, in_shape, **options)``, where ``in_shape`` is one example's
shape without the batch dimension: (C, H, W) for images, (C, L) for 1-D signals. Options are
checked against the factory's signature before it runs, so a misspelt YAML key fails with the
allowed names instead of a TypeError from deep inside a constructor.

- ``preact_resnet18``: He et al. 2016, "Identity Mappings"; ``variant`` "kuangliu" (default,
  kuangliu/pytorch-cifar), "awp" (the AWP code's) or "amp" (the AMP code's).
- ``wide_resnet``: Zagoruyko & Komodakis 2016; ``variant`` "awp" (default,
  xternalz/WideResNet-pytorch, the AWP code's) or "amp" (the AMP code's).
- ``vgg16_bn``: Simonyan & Zisserman 2015 with Ioffe & Szegedy 2015 BN; ``variant`` "kuangliu"
  (default, kuangliu/pytorch-cifar) or "amp" (the AMP code's 3-FC-layer VGG16).
- ``pyramidnet``: Han et al. 2017 with Yamada et al. 2019 ShakeDrop; dyhan0920/PyramidNet-PyTorch
  (the AMP code's PyramidNet-164 (270) is the default).
- ``mlp``, ``cnn1d``: Greydanus 2020, MNIST-1D; greydanus/mnist1d.
- ``small_cnn``: this project's two-layer CNN for sklearn's 8x8 digits.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainers._registry import Registry, unknown_message

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "build", "factory", "option_names", "options"]

#: Model name -> the module defining the factory of that name. Modules (and PyTorch) are
#: imported on first use, so a spec's model name is checked without PyTorch.
MODELS: Registry[str] = Registry("model")

# Registered here rather than by decorators in each file so that the model files do not import
# this package (a cycle) and the full list of names sits in one place.
for _name, _module in {
    "preact_resnet18": "preact_resnet",
    "wide_resnet": "wide_resnet",
    "vgg16_bn": "vgg",
    "pyramidnet": "pyramidnet",
    "mlp": "small",
    "cnn1d": "small",
    "small_cnn": "small",
}.items():
    MODELS.register(_name)(f"{__name__}.{_module}")


def factory(name: str) -> Callable[..., nn.Module]:
    """The factory of model ``name`` (its module imported now); ValueError if unknown."""
    return getattr(importlib.import_module(MODELS.get(name)), name)


_POSITIONAL = ("num_classes", "in_shape")


def option_names(name: str) -> list[str]:
    """The keyword options of model ``name``, read from its module's source without running
    it: a spec's ``model.args`` is checked where PyTorch is not loaded (a sweep's driver, and
    ``sweeps validate``), so a misspelt option fails there, before any trial. Equal to
    ``list(options(name))`` (tested for every model)."""
    return list(_option_names(MODELS.get(name), name))


@functools.cache
def _option_names(module_name: str, name: str) -> tuple[str, ...]:
    # Parsed once per process: a spec is validated for every trial a driver records, and a
    # model file's parse (0.6-0.9 ms) would otherwise double that validation's cost.
    module = importlib.util.find_spec(module_name)
    if module is None or module.origin is None:
        raise ValueError(f"model {name!r}: its module cannot be found")
    tree = ast.parse(Path(module.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            return tuple(a.arg for a in args if a.arg not in _POSITIONAL)
    raise ValueError(f"model {name!r}: no factory of that name in {module.origin}")


def options(name: str) -> dict[str, object]:
    """The keyword options of model ``name`` with their defaults."""
    params = inspect.signature(factory(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _POSITIONAL}


def build(name: str, *, num_classes: int, in_shape: Sequence[int], **kwargs: object) -> nn.Module:
    """Instantiate model ``name`` for ``num_classes`` outputs on inputs of shape ``in_shape``.

    Raises ValueError for an unknown name, an unknown option, or an option value the model
    cannot take (the message names the argument and what is allowed).
    """
    make = factory(name)
    allowed = list(options(name))
    for key in kwargs:
        if key not in allowed:
            raise ValueError(unknown_message(f"{name} argument", key, allowed or ["(none)"]))
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, but got {num_classes=}")
    shape = tuple(int(d) for d in in_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"in_shape must be non-empty with positive sizes, but got {in_shape=}")
    return make(num_classes=num_classes, in_shape=shape, **kwargs)
