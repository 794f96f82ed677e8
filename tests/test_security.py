"""Security defaults as tests: no code execution from spec data, inert fields, safe names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeps.cli import app
from tests.sweeps.conftest import sweep_dict

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for pkg in ("trainers", "search_spaces", "sweeps", "examples", "infra",
                               "benchmarks", "docs")
                 for p in (ROOT / pkg).rglob("*.py"))


def calls(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.append(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                out.append(f"{f.value.id}.{f.attr}")
    return out


def test_the_sources_are_scanned():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_eval_exec_unsafe_yaml_or_pickle(path):
    tree = ast.parse(path.read_text())
    found = set(calls(tree)) & {"eval", "exec", "yaml.load", "yaml.unsafe_load", "pickle.load",
                                "pickle.loads", "os.system"}
    # trainers/_yaml.py calls yaml.load with its own SafeLoader subclass, checked below
    if path.name == "_yaml.py":
        found.discard("yaml.load")
        assert "Loader=_StrictSafeLoader" in path.read_text()
    assert not found, f"{path}: {found}"
    for node in ast.walk(tree):  # no subprocess with a shell
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                assert not (kw.arg == "shell" and getattr(kw.value, "value", False) is True), path


def test_python_object_tags_are_refused():
    from trainers._yaml import load_yaml

    with pytest.raises(ValueError, match="invalid YAML"):
        load_yaml("name: !!python/object/apply:os.system ['touch pwned']\n")


def test_shell_metacharacters_in_spec_fields_stay_inert(tmp_path, monkeypatch, ray_local):
    """A smoke sweep whose free-text fields hold shell syntax runs and creates no file."""
    monkeypatch.chdir(tmp_path)
    d = sweep_dict("inert", num_samples=2)
    d["train"]["data"]["root"] = "$(touch PWNED1)"  # ignored by mnist1d, must not run
    d["train"]["provenance"] = {"note": "; touch PWNED2 `touch PWNED3`"}
    d["storage_path"] = str(tmp_path / "ray")
    d["tracking_uri"] = f"sqlite:///{tmp_path / 'm.db'}"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    result = CliRunner().invoke(app, ["run", "spec.yaml", "--smoke-test", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().rglob("PWNED*"))


def test_export_sanitises_names_used_in_paths():
    from sweeps.export import _safe

    assert _safe("../../etc/passwd") == ".._.._etc_passwd"
    assert "/" not in _safe("a/b\\c") and _safe("ok-1.2_x") == "ok-1.2_x"
