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
    (
        with_("scheduler.name", "asah"),
        "unknown scheduler.name 'asah'; allowed: asha, fifo, hyperband; did you mean 'asha'?",
    ),
    (with_("searcher.sampler", "bayes"), "unknown searcher.sampler 'bayes'; allowed: cmaes, gp"),
    (
        with_("searcher.max_history", 100),
        "searcher.max_history: Input should be greater than or equal to 250",
    ),
    (
        with_("searcher", {"sampler": "random", "max_history": 1000}),
        "searcher.max_history bounds single-objective TPE only, but the sweep has sampler "
        "'random' and 1 metric(s); remove it",
    ),
    (with_("mode", "maximize"), "mode"),
    # numpy's RandomState takes 0..2**32-1: refused here, not by the searcher after start
    (with_("searcher.seed", -1), "searcher.seed: Input should be greater than or equal to 0"),
    (with_("searcher.seed", 2**40), "searcher.seed: Input should be less than 4294967296"),
    (
        yaml.safe_dump({**sweep_dict(), "metric": [], "mode": []}),
        "metric: give at least one metric",
    ),
    (
        with_("space.ranges", {"perturbation.radius": [0.005, float("inf")]}),
        "space.ranges.perturbation.radius.1: Input should be a finite number, but got inf",
    ),
    (
        with_("space.ranges", {"perturbation.radius": [0.5, 0.05]}),
        "range for 'perturbation.radius': range low must be <= high",
    ),
    (with_("name", "abc\n"), "name"),
    (with_("metric", "accuracy"), "metric 'accuracy' is not reported by trials; allowed:"),
    (with_("metric", "val_robust_acc"), "needs train.adversarial"),
    # selection on the test set is refused, naming the validation metric to use
    (with_("metric", "test_acc"), "metric 'test_acc' selects on the test set"),
    (with_("metric", "test_acc"), "use 'val_acc' (or set allow_test_selection: true)"),
    (with_("metric", "test_loss"), "use 'val_loss' (or set allow_test_selection: true)"),
    (with_("train.data", {"name": "mnist1d", "val_fraction": 0}), "needs a validation split"),
    # the finalists' verdict needs a test counterpart of the metric it picks the winner by
    (
        yaml.safe_dump({**sweep_dict(), "metric": "gen_gap", "finalists": {"top_k": 2}}),
        "metric 'gen_gap' has no test-set counterpart for the finalists' verdict; put one of "
        "val_acc, val_loss, val_robust_acc first, or set finalists.top_k: 0",
    ),
    # nor may a test metric pick the finalists' winner, even where selection on it is allowed
    (
        yaml.safe_dump(
            {
                **sweep_dict(),
                "metric": "test_acc",
                "allow_test_selection": True,
                "finalists": {"top_k": 3},
            }
        ),
        "metric 'test_acc' is the test set's own, so the finalists' verdict would compare the "
        "numbers it picked the winner by; put one of val_acc, val_loss, val_robust_acc first, "
        "or set finalists.top_k: 0",
    ),
    # the regularizer is stated once: a space that contradicts it is refused
    (
        with_("train.perturbation", {"kind": "sam"}),
        "space.name 'amp' searches perturbation kind 'amp', but train.perturbation.kind is 'sam'",
    ),
    # counts that reach a cluster are bounded
    (with_("num_samples", 10**9), "num_samples: Input should be less than or equal to 10000"),
    (with_("max_concurrent", 10**6), "max_concurrent: Input should be less than or equal to"),
    (with_("train.epochs", 10**7), "train.epochs must be <= 10000"),
    (with_("finalists", {"seeds": 1000}), "finalists.seeds: Input should be less than or equal"),
    (with_("finalists", {"top_k": 500}), "finalists.top_k: Input should be less than or equal"),
    (base_text() + "num_samples: 3\n", "duplicate key 'num_samples'"),
    (with_("name", "$(touch pwned)"), "name must be 1-64 characters"),
    (with_("name", "../../etc"), "name must be 1-64 characters"),
    (with_("resources.gpu", 1.5), "gpu above 1 must be a whole number"),
    (with_("num_samples", 0), "num_samples: Input should be greater than or equal to 1"),
    (
        with_("space.ranges", {"perturbation.radiu": [0.1, 0.2]}),
        "did you mean 'perturbation.radius'",
    ),
    (with_("space.ranges", {"perturbation.radius": [0.5, 0.1]}), "low must be <= high"),
    (
        with_("train.data", {"name": "cifar10", "root": "/nonexistent/cifar"}),
        "'/nonexistent/cifar' does not exist",
    ),
    (with_("train.model.name", "resnet50"), "unknown model 'resnet50'"),
    (with_("train.perturbation", {"kind": "amp", "inner_steps": 0}), "inner_steps"),
    (
        with_("space.ranges", {"perturbation.inner_steps": [0, 2]}),
        "space: a sampled point is not a valid TrainSpec",
    ),
    (with_("mode", ["max", "min"]), "metric and mode must have the same length"),
    ("name: t\ntrain: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "a sweep spec is a mapping"),
    (with_("train.precision", "fp8"), "train.precision: allowed: 'fp32', 'bf16' or 'fp16'"),
    # ASHA stopped every trial at max_t, each recorded as stopped early: a sweep with no best
    (
        with_("scheduler.max_t", 2),
        "scheduler.max_t must equal train.epochs (3), but got 2; drop it (it defaults to "
        "train.epochs)",
    ),
    (with_("scheduler.max_t", 4), "scheduler.max_t must equal train.epochs (3), but got 4"),
    # a dataset's sizes are checked before any trial starts (each trial's loader refused
    # them, after Ray and the runs had started), and generated data is bounded
    (
        with_("train.data", {"name": "digits", "num_train": 5000}),
        "train.data: num_train must be at most 1437 for dataset 'digits' (its train split)",
    ),
    (
        with_("train.data", {"name": "mnist1d", "num_train": 10**12}),
        "num_train + num_test must be at most 1000000 for dataset 'mnist1d'",
    ),
    (with_("tracking_uri", "http://[bad/x"), "tracking_uri: 'http://[bad/x' is not a valid URI"),
    # a URI no store opens: refused here, not after the tracking database or Ray was started
    (with_("tracking_uri", "bogus://x"), "tracking_uri: scheme 'bogus' is not a tracking store"),
    (with_("storage_path", "bogus://b/x"), "storage_path: scheme 'bogus' is not a filesystem"),
    (
        with_("searcher", {"sampler": "tpe", "storage": "bogus://x"}),
        "searcher.storage: scheme 'bogus' is not an Optuna RDB storage",
    ),
    # no infinite number (it trained to NaN), nor a thread count that overflows torch's
    (with_("train.optim.lr", float("inf")), "train.optim.lr: Input should be a finite number"),
    (with_("train.num_threads", 10**20), "train.num_threads: Input should be less than or equal"),
    # a list as a key: one line, not a trace from the duplicate-key check
    (base_text() + "? [a, b]\n: 1\n", "keys must be names"),
    # a key with a line break in it is quoted: the spec cannot print lines of its own
    (
        with_("train.optim", {"lr": 0.1, "lr\nerror: fake second line": 1}),
        "train.optim.'lr\\nerror: fake second line': unknown key",
    ),
]


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(("text", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_spec_is_one_line_exit_2_and_creates_nothing(
    text, expected, command, tmp_path, monkeypatch
):
    import ray

    ray_was_up = ray.is_initialized()

    def never(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a refused spec reached the runner")

    monkeypatch.setattr("sweeps.runner.run_sweep", never)

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
    assert ray.is_initialized() == ray_was_up  # no Ray started (checked below as well)


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


def spec_of(**over):  # noqa: ANN003, ANN201
    from sweeps.spec import SweepSpec

    return SweepSpec.model_validate(sweep_dict(**over))


def test_a_cost_objective_beside_a_validation_metric_is_no_test_selection():
    # A run's compute is reported at its end, as the test metrics are, but selecting on it
    # looks at no test example: a Pareto search of accuracy against cost is allowed as is.
    spec = spec_of(
        metric=["val_acc", "closure_passes_total"],
        mode=["max", "min"],
        searcher={"sampler": "nsga2", "seed": 0},
        scheduler={"name": "fifo"},
    )
    assert spec.metrics == ["val_acc", "closure_passes_total"] and not spec.allow_test_selection


@pytest.mark.parametrize(
    ("kind", "extra", "space"),
    [
        ("sam", {}, "sam"),
        ("sam", {"adaptive": True}, "asam"),
        ("amp", {}, "amp"),
        ("awp", {}, "awp"),
        ("erm", {}, "erm"),
    ],
)
def test_the_space_follows_the_perturbation_kind(kind, extra, space):
    d = sweep_dict()
    d.pop("space")
    d["train"]["perturbation"] = {"kind": kind, **extra}
    from sweeps.spec import SweepSpec

    s = SweepSpec.model_validate(d)
    assert s.space_name == space
    # and the points it samples run that kind
    from sweeps.spec import check_space

    check_space(s, samples=4)


def test_grace_period_defaults_to_the_first_lr_decay_and_warns_when_earlier():
    train = {
        **sweep_dict()["train"],
        "epochs": 10,
        "schedule": {"name": "multistep", "milestones": [6, 8]},
    }
    s = spec_of(train=train, scheduler={"name": "asha"})
    assert s.grace_period == 6 and s.warnings() == []
    early = spec_of(train=train, scheduler={"name": "asha", "grace_period": 2})
    assert early.grace_period == 2
    (w,) = early.warnings()
    assert "before the LR schedule's first decay (epoch 6)" in w
    assert spec_of(scheduler={"name": "asha"}).grace_period == 1  # cosine: no decay step


def test_validate_prints_the_grace_period_warning_on_one_line(tmp_path):
    d = sweep_dict()
    d["train"].update(epochs=10, schedule={"name": "multistep", "milestones": [6]})
    d["scheduler"] = {"name": "asha", "grace_period": 1}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    r = CliRunner().invoke(app, ["validate", str(tmp_path / "s.yaml")])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "grace_period 1" in warnings[0]


def test_smoke_runs_under_their_own_name_and_name_overrides():
    from sweeps.spec import SpecError, SweepSpec, as_run

    s = spec_of(name="quick")
    assert as_run(s, smoke_test=True).name == "quick-smoke"
    assert as_run(s, name="other").name == "other"
    assert as_run(s, name="other", smoke_test=True).name == "other-smoke"
    smoke = as_run(s, smoke_test=True)
    assert smoke.num_samples == 2 and smoke.train.epochs == 1
    # a max_t follows the epochs (it must equal them), so the resolved spec stays valid
    timed = as_run(spec_of(scheduler={"name": "asha", "max_t": 3}), smoke_test=True)
    assert timed.scheduler.max_t == timed.train.epochs == 1
    assert SweepSpec.model_validate(timed.model_dump(mode="json")).scheduler.max_t == 1
    with pytest.raises(SpecError, match="^--name: name must be 1-64 characters"):
        as_run(s, name="../etc")


def test_run_refuses_a_bad_name_option_before_starting_anything(tmp_path, monkeypatch):
    import ray

    ray_was_up = ray.is_initialized()

    def never(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a refused spec reached the runner")

    monkeypatch.setattr("sweeps.runner.run_sweep", never)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(base_text())
    r = CliRunner().invoke(app, ["run", "spec.yaml", "--name", "$(rm -rf /)"])
    assert r.exit_code == 2 and r.output.startswith("error: --name:"), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    assert ray.is_initialized() == ray_was_up  # no Ray started (checked below as well)


def test_the_resolved_spec_carries_every_default_that_is_used():
    s = spec_of()
    dumped = s.model_dump(mode="json")
    assert dumped["space"]["name"] == "amp"
    assert None not in dumped["train"]["perturbation"].values()
    sam = spec_of(
        train={**sweep_dict()["train"], "perturbation": {"kind": "sam"}}, space={"name": "sam"}
    )
    assert sam.model_dump(mode="json")["train"]["perturbation"]["adaptive"] is False


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("FLATSWEEP_MLFLOW_PROCESS", "yes", "FLATSWEEP_MLFLOW_PROCESS must be auto, 0 (threads"),
        ("FLATSWEEP_MLFLOW_PROCESS", "33", "writer processes from 1 to 32, but got '33'"),
        ("FLATSWEEP_MLFLOW_WRITERS", "0", "FLATSWEEP_MLFLOW_WRITERS must be a whole number >= 1"),
        ("FLATSWEEP_MLFLOW_BULK", "yes", "FLATSWEEP_MLFLOW_BULK must be 0 or 1, but got 'yes'"),
        ("FLATSWEEP_OPTUNA_BULK", "2", "FLATSWEEP_OPTUNA_BULK must be 0 or 1, but got '2'"),
        (
            "FLATSWEEP_MLFLOW_METRICS_EVERY_S",
            "soon",
            "FLATSWEEP_MLFLOW_METRICS_EVERY_S must be a number of seconds >= 0, but got 'soon'",
        ),
        ("FLATSWEEP_MLFLOW_METRICS_EVERY_S", "-1", "must be a number of seconds >= 0"),
        ("FLATSWEEP_MLFLOW_METRICS_EVERY_S", "nan", "must be a number of seconds >= 0"),
    ],
)
def test_a_bad_writer_setting_is_one_line_and_starts_nothing(
    var, value, expected, tmp_path, monkeypatch
):
    import ray

    ray_was_up = ray.is_initialized()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(var, value)
    (tmp_path / "spec.yaml").write_text(base_text())
    r = CliRunner().invoke(app, ["run", "spec.yaml"])
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: ") and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no db, no results
    assert ray.is_initialized() == ray_was_up


def test_a_name_no_spec_takes_is_no_sweep_even_beside_an_odd_experiment(tmp_path):
    # An experiment made by hand with a quote in its name broke every lookup's filter string.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    MlflowClient(uri).create_experiment("bob's exp", artifact_location=str(tmp_path / "a"))
    for name in ("bob's exp", "t"):
        result = CliRunner().invoke(app, ["status", name, "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: name: no sweep {name!r} in "), result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_trial_the_local_ray_could_never_place_is_refused_before_anything_starts(
    command, tmp_path, monkeypatch
):
    # Tune would wait for it for ever ("No trial is running"), after the parent run was made.
    import ray
    from ray._private.utils import get_num_cpus

    ray_was_up = ray.is_initialized()
    # The check is for a Ray the sweep starts itself; this test worker may hold the session's.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = get_num_cpus()
    (tmp_path / "spec.yaml").write_text(with_("resources", {"cpu": cpus + 1}))
    result = CliRunner().invoke(app, [command, "spec.yaml"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        f"error: resources: a trial asks for {cpus + 1} CPUs and 0 GPUs, but the local Ray"
    ), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no db, no results
    monkeypatch.undo()
    assert ray.is_initialized() == ray_was_up  # no Ray started


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_path_that_is_a_file_is_one_line(command, tmp_path):
    (tmp_path / "taken").write_text("")
    result = CliRunner().invoke(app, [command, "t", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2, result.output
    assert (
        result.output
        == f"error: --out: {str(tmp_path / 'taken')!r} exists and is not a directory\n"
    )


def test_an_address_that_is_not_a_url_is_one_line(tmp_path):
    (tmp_path / "spec.yaml").write_text(base_text())
    result = CliRunner().invoke(
        app, ["validate", str(tmp_path / "spec.yaml"), "--address", "http://[bad"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --address must be the Ray dashboard's http(s)://")
