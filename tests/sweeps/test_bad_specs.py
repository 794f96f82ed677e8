"""Bad specs: one line naming the field and the allowed values, exit 2, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sweeps.cli import app
from tests.sweeps.conftest import sweep_dict


def with_(path: str, value):  # noqa: ANN001, ANN201
    d = sweep_dict()
    *parents, leaf = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return yaml.safe_dump(d)


def base_text() -> str:
    return yaml.safe_dump(sweep_dict())


BAD = [
    (with_("num_sample", 3), "num_sample: unknown key; did you mean 'num_samples'?"),
    (with_("train.optim.lrr", 0.1), "train.optim.lrr: unknown key; did you mean 'lr'?"),
    (with_("space.name", "amq"), "unknown search space 'amq'"),
    (with_("scheduler.name", "asah"), "scheduler.name: allowed: 'asha', 'hyperband' or 'fifo'"),
    (with_("searcher.sampler", "bayes"), "searcher.sampler: allowed: 'tpe', 'random'"),
    (with_("mode", "maximize"), "mode"),
    (with_("metric", "accuracy"), "metric 'accuracy' is not reported by trials; allowed:"),
    (with_("metric", "robust_acc"), "needs train.adversarial"),
    (base_text() + "num_samples: 3\n", "duplicate key 'num_samples'"),
    (with_("name", "$(touch pwned)"), "name must be 1-64 characters"),
    (with_("name", "../../etc"), "name must be 1-64 characters"),
    (with_("resources.gpu", 1.5), "gpu above 1 must be a whole number"),
    (with_("num_samples", 0), "num_samples: Input should be greater than or equal to 1"),
    (with_("space.ranges", {"perturbation.radiu": [0.1, 0.2]}),
     "did you mean 'perturbation.radius'"),
    (with_("space.ranges", {"perturbation.radius": [0.5, 0.1]}), "low must be <= high"),
    (with_("train.data", {"name": "cifar10", "root": "/nonexistent/cifar"}),
     "'/nonexistent/cifar' does not exist"),
    (with_("train.model.name", "resnet50"), "unknown model 'resnet50'"),
    (with_("train.perturbation", {"kind": "amp", "inner_steps": 0}), "inner_steps"),
    (with_("train.perturbation", {"kind": "amp", "inner_steps": 2}).replace(
        "name: amp", "name: sam"), "space: a sampled point is not a valid TrainSpec"),
    (with_("mode", ["max", "min"]), "metric and mode must have the same length"),
    ("name: t\ntrain: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "a sweep spec is a mapping"),
    (with_("train.precision", "fp8"), "train.precision: allowed: 'fp32', 'bf16' or 'fp16'"),
]


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("text", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_spec_is_one_line_exit_2_and_creates_nothing(text, expected, command, tmp_path,
                                                          monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "spec.yaml").write_text(text)
    result = CliRunner().invoke(app, [command, "spec.yaml"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no db, no results
    assert not ray.is_initialized()


def test_missing_spec_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "nope.yaml"])
    assert result.exit_code == 2 and "spec file 'nope.yaml' does not exist" in result.output


def test_scientific_notation_in_a_spec_is_a_number(tmp_path):
    text = base_text().replace("lr: 0.1", "lr: 1e-1")
    assert "1e-1" in text
    (tmp_path / "s.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert result.exit_code == 0, result.output


def test_examples_validate():
    from sweeps.spec import load_spec

    specs = sorted(Path("examples").glob("*.yaml")) + sorted(Path("examples/paper").glob("*.yaml"))
    sweeps_seen = 0
    for path in specs:
        if "train" not in yaml.safe_load(path.read_text()):
            continue  # a plain TrainSpec, not a sweep
        # paper recipes name data roots that exist on the GPU cluster, not here
        load_spec(path, check_files="paper" not in path.parts)
        sweeps_seen += 1
    assert sweeps_seen >= 5
