"""The benchmark scripts as modules, for the tests that call their functions directly.

``benchmarks/`` is a folder of scripts, not a package: each is loaded from its file under its
own name, and registered in ``sys.modules`` first because dataclasses look their module up
there while the class body runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a fresh module ``name``, replacing any earlier load."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
