"""``sweeps reproduce``: the paper presets are the papers' settings, carry their numbers, and
re-run end to end (on MNIST-1D stand-ins, on real local Ray and a temporary MLflow store)."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sweeps import jobs, tracking
from sweeps import reproduce as rp
from sweeps.reproduce_cli import register
from sweeps.spec import SpecError
from trainers import test_metric_for

PRESETS = ["amp_cifar10", "amp_cifar100", "amp_svhn", "awp_cifar10"]
AMP_PRESETS = [p for p in PRESETS if p.startswith("amp_")]
# Both papers: SGD, lr 0.1, momentum 0.9, 200 epochs with x0.1 at epochs 100 and 150.
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
MULTISTEP = {"name": "multistep", "milestones": [100, 150], "gamma": 0.1, "warmup_epochs": 0.0}


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _group() -> None:
        """Keeps ``reproduce`` a subcommand, as in the ``sweeps`` app."""

    register(app)
    return app


def plan_of(preset: str, **kw: Any) -> rp.Plan:
    return rp.plan(preset, check_files=False, **kw)


# --- the presets ---------------------------------------------------------------------------------


def test_the_shipped_presets_each_have_a_reference():
    assert rp.preset_names() == PRESETS
    refs = rp.load_references()
    assert sorted(refs) == PRESETS
    for name in PRESETS:
        p = plan_of(name)
        assert p.reference is refs[name] or p.reference == refs[name]
        # the published quantity is measured by the metric the preset selects on
        assert test_metric_for(p.spec.primary[0]) == refs[name].metric


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_carries_its_numbers_sources_and_deviations_in_its_comments(name):
    text = (rp.PRESET_DIR / f"{name}.yaml").read_text()
    ref = rp.load_references()[name]
    numbers = []
    for side in (ref.method, ref.baseline):
        if side.paper is not None:
            numbers += [f"{side.paper.mean:.2f}", f"{side.paper.std:g}"]
        if side.official is not None:
            numbers += [f"{side.official.best:.2f}", f"{side.official.last:.2f}"]
    assert numbers
    for n in numbers:
        assert re.search(rf"^#.*\b{re.escape(n)}\b", text, re.M), (name, n)
    assert f"key {name}." in text  # points at the machine-readable copy
    assert "# Deviations that remain:" in text
    assert "Validation split" in text and "TF32" in text


@pytest.mark.parametrize("name", AMP_PRESETS)
def test_amp_presets_are_the_official_recipe(name):
    t = plan_of(name).spec.train
    assert t.model.name == "preact_resnet18" and t.model.args == {"variant": "amp"}
    assert t.optim.model_dump() == {
        **SGD,
        "nesterov": True,
        "weight_decay": 1e-4,
        "grad_clip_norm": 50,
    }
    assert t.schedule.model_dump() == MULTISTEP
    assert (t.epochs, t.batch_size, t.precision) == (200, 50, "fp32")
    pert = t.perturbation
    assert (pert.kind, pert.radius, pert.inner_steps, pert.inner_lr) == ("amp", 0.5, 1, 1.0)
    assert pert.bn_update == "all_passes" and pert.warmup_epochs == 0
    d = t.data
    assert d.augment and d.pad_mode == "grey"
    assert d.crop_padding == (2 if d.name == "svhn" else 4)
    assert t.adversarial is None and t.test_at_best_val


def test_the_awp_preset_is_the_official_recipe():
    t = plan_of("awp_cifar10").spec.train
    assert t.model.args == {"variant": "awp"}
    assert t.optim.model_dump() == {
        **SGD,
        "nesterov": False,
        "weight_decay": 5e-4,
        "grad_clip_norm": None,
    }
    assert t.schedule.model_dump() == MULTISTEP
    assert (t.epochs, t.batch_size, t.precision) == (200, 128, "fp32")
    pert = t.perturbation
    assert (pert.kind, pert.radius, pert.inner_steps, pert.inner_lr) == ("awp", 0.01, 1, 0.01)
    assert pert.bn_update == "first_pass" and pert.warmup_epochs == 0
    a = t.adversarial
    assert (a.eps, a.step_size, a.steps, a.eval_steps) == (8 / 255, 2 / 255, 10, 20)
    assert a.eval_examples is None and a.eval_precision == "fp32"
    d = t.data
    assert (d.pad_mode, d.crop_padding, d.num_val) == ("reflect", 4, 1000)
    assert plan_of("awp_cifar10").spec.primary == ("val_robust_acc", "max")


# --- overrides -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milestones", "old", "new", "expected"),
    [
        ([100, 150], 200, 200, [100, 150]),
        ([100, 150], 200, 20, [10, 15]),
        ([100, 150], 200, 10, [5, 8]),  # 7.5 rounds half up
        ([100, 150], 200, 3, [2]),  # both land on epoch 2: one decay left
        ([100, 150], 200, 2, [1]),
        ([100, 150], 200, 1, []),
        ([1], 2, 400, [200]),
    ],
)
def test_milestones_keep_their_fraction_of_training(milestones, old, new, expected):
    got = rp.scale_milestones(milestones, old, new)
    assert got == expected
    assert all(0 < m < new for m in got)


def test_the_plan_applies_the_overrides_and_keeps_the_rest():
    p = plan_of("amp_cifar10", seeds=5, epochs=20, data_root="/elsewhere")
    s = p.spec
    assert s.name == "amp-cifar10-preactresnet18-repro"
    assert (s.finalists.seeds, s.finalists.baseline, p.seeds) == (5, True, [1, 2, 3, 4, 5])
    assert (s.train.epochs, s.train.schedule.milestones, p.preset_epochs) == (20, [10, 15], 200)
    assert s.train.data.root == "/elsewhere" and s.train.data.name == "cifar10"
    assert s.train.test_at_best_val
    assert s.resources.gpu == 0.25 and s.train.device == "cuda"
    assert p.smoke is None and p.options == {"seeds": 5, "epochs": 20, "data_root": "/elsewhere"}
    # the stored YAML re-validates to the same spec (what `sweeps resume` reads back)
    again = yaml.safe_load(p.spec_text())
    assert again == p.raw and p.spec_text().startswith("# sweeps reproduce amp_cifar10 --seeds 5")


def test_a_smoke_plan_is_cpu_sized_and_named_as_one(tmp_path):
    p = rp.plan("awp_cifar10", data="mnist1d", tracking_uri="sqlite:///rel.db")
    s = p.spec
    assert s.name == "awp-cifar10-preactresnet18-repro-smoke" and p.smoke == "mnist1d"
    assert (s.train.data.name, s.train.model.name, s.train.device) == ("mnist1d", "cnn1d", "cpu")
    assert (s.resources.cpu, s.resources.gpu) == (1, 0)
    # the method itself is untouched
    assert s.train.perturbation.kind == "awp" and s.train.adversarial is not None
    assert s.tracking_uri == f"sqlite:///{Path('rel.db').resolve()}"  # absolute, for a job too


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"preset": "amp_cifar1"}, "unknown preset 'amp_cifar1'; allowed: amp_cifar10"),
        ({"seeds": 0}, "--seeds must be between 1 and 20, but got 0"),
        ({"epochs": 0}, "--epochs must be between 1 and 10000, but got 0"),
        ({"name": "a b"}, "--name must be 1-64 characters"),
        ({"data": "cifar"}, "--data: unknown smoke dataset 'cifar'; allowed: digits, mnist1d"),
        ({"data": "mnist1d", "data_root": "/d"}, "--data-root: the stand-in dataset"),
    ],
)
def test_bad_options_are_one_line_errors(kw, message):
    kw = {"preset": "amp_cifar10", **kw}
    with pytest.raises(SpecError) as e:
        rp.plan(kw.pop("preset"), check_files=False, **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_data_root_is_named_with_the_flag_that_fixes_it(tmp_path):
    r = CliRunner().invoke(
        make_app(), ["reproduce", "amp_svhn", "--dry-run", "--data-root", str(tmp_path)]
    )
    assert r.exit_code == 2
    assert "train.data.root:" in r.output and "lacks train_32x32.mat" in r.output
    assert "--data-root" in r.output


def test_the_reference_must_match_the_presets_metric(tmp_path):
    refs = yaml.safe_load(rp.REFERENCE_FILE.read_text())
    refs["amp_cifar10"]["metric"] = "test_robust_acc"
    f = tmp_path / "ref.yaml"
    f.write_text(yaml.safe_dump(refs))
    with pytest.raises(SpecError, match="compares test_robust_acc, but the preset's metric"):
        plan_of("amp_cifar10", reference_file=f)


# --- the table -----------------------------------------------------------------------------------


def hand_made_table(preset: str, method: dict, baseline: dict) -> rp.ReproductionTable:
    p = plan_of(preset)
    m, b = rp.sides(p)
    m.last, m.best_val = method, dict(method)
    b.last, b.best_val = baseline, dict(baseline)
    metric = p.reference.metric
    return rp.ReproductionTable(
        preset, p.reference.title, p.spec.name, metric, p.reference.quantity, 200, 200,
        p.seeds, None, m, b, p.reference,
    )  # fmt: skip


def test_the_table_is_in_the_papers_unit_with_a_paired_difference():
    t = hand_made_table("amp_cifar10", {1: 0.96, 2: 0.962, 3: 0.958}, {1: 0.95, 2: 0.951, 3: 0.949})
    text = rp.format_table(t)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| AMP | 3.97 ± 0.091 | - | 4.00 ± 0.20 (n=3) | 4.00 ± 0.20 (n=3) |" in text
    assert "| ERM | 5.02 ± 0.212 | - | 5.00 ± 0.10 (n=3) |" in text
    # error difference = -(accuracy difference): AMP's error is 1.00 point lower on every seed
    assert rows["AMP - ERM"].startswith("| AMP - ERM | -1.05 | - | -1.00 [")
    assert "Smoke run" not in text and "Shortened run" not in text
    m = rp.table_metrics(t)
    assert m["reproduce.method.test_acc.mean"] == pytest.approx(0.96)
    assert m["reproduce.delta.test_acc.mean"] == pytest.approx(0.01)
    assert m["reproduce.delta.test_acc.ci_low"] < 0.01 < m["reproduce.delta.test_acc.ci_high"]
    assert m["reproduce.baseline.test_acc_at_best_val.n"] == 3


def test_official_logs_and_a_single_seed_are_shown_as_such():
    t = hand_made_table("awp_cifar10", {1: 0.55}, {1: 0.45})
    text = rp.format_table(t)
    assert "| AT-AWP | - | 55.39 / 54.30 | 55.00 ± 0.00 (n=1) |" in text
    assert "| AT | - | 52.79 / 43.75 |" in text
    assert "| AT-AWP - AT | - | +2.60 / +10.55 | +10.00 (n=1, no interval) |" in text
    m = rp.table_metrics(t)
    assert "reproduce.delta.test_robust_acc.ci_low" not in m  # no interval from one seed
    assert m["reproduce.delta.test_robust_acc.mean"] == pytest.approx(0.10)


def test_seeds_without_a_result_are_named_under_the_table(tmp_path):
    """Read from real runs: a diverged seed (FINISHED, tagged, no test metric) is out of the
    numbers and said to be; a failed seed that a resume ran again counts its finished run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from sweeps import tracking

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("r", artifact_location=str(tmp_path / "a"))

    def run(seed: int, status: str, test: float | None, **tags: str):  # noqa: ANN202
        r = client.create_run(exp).info.run_id
        metrics = [Metric("test_acc", test, 0, 0)] if test is not None else []
        tags = {tracking.TAG_SEED: str(seed), **tags}
        client.log_batch(r, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(r, status)
        return client.get_run(r)

    runs = [
        run(1, "FINISHED", 0.96),
        run(2, "FINISHED", None, **{tracking.TAG_DIVERGED: "1"}),
        run(3, "FINISHED", 0.95),
        run(3, "FAILED", None),  # the attempt before the resume, read after its re-run
    ]
    t = hand_made_table("amp_cifar10", {}, {1: 0.95, 2: 0.951, 3: 0.949})
    t.method.last, t.method.best_val = {}, {}
    rp._fill(t.method, runs, "test_acc")

    assert t.method.last == {1: 0.96, 3: 0.95} and t.method.failed == {2: "diverged"}
    text = rp.format_table(t)
    assert "(n=2)" in text
    assert "AMP: diverged on seed 2; those seeds are in neither its numbers nor the paired" in text


# --- on a cluster --------------------------------------------------------------------------------


class FakeJobClient:
    """Stands in for ``JobSubmissionClient``; keeps the staged files of each submission."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.staged: dict[str, str] = {}

    def submit_job(self, **kw: Any) -> str:
        self.submitted.append(kw)
        root = Path(kw["runtime_env"]["working_dir"])
        self.staged = {str(f.relative_to(root)): f.read_text() for f in root.glob("*.yaml")}
        return kw["submission_id"]


def test_with_an_address_the_same_command_is_submitted_as_a_ray_job(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "FLATSWEEP_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeJobClient()
    monkeypatch.setattr(jobs, "client", lambda address: fake)
    r = CliRunner().invoke(
        make_app(),
        [
            "reproduce", "amp_cifar10", "--seeds", "2", "--epochs", "10",
            "--data-root", "/data dir/cifar10", "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--address", "http://127.0.0.1:8265",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "submitted Ray job flatsweep-amp-cifar10-preactresnet18-repro" in r.output
    (job,) = fake.submitted
    assert job["submission_id"] == "flatsweep-amp-cifar10-preactresnet18-repro"
    assert shlex.split(job["entrypoint"]) == [
        "python", "-m", "sweeps", "reproduce", "amp_cifar10.yaml",
        "--reference", "reference.yaml", "--name", "amp-cifar10-preactresnet18-repro", "--quiet",
        "--seeds", "2", "--epochs", "10", "--data-root", "/data dir/cifar10",
        "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage-path", str(tmp_path / "ray"),
    ]  # fmt: skip
    # the preset travels unchanged under its own name (which keys its reference)
    assert fake.staged["amp_cifar10.yaml"] == (rp.PRESET_DIR / "amp_cifar10.yaml").read_text()
    staged_ref = yaml.safe_load(fake.staged["reference.yaml"])
    assert list(staged_ref) == ["amp_cifar10"]
    assert staged_ref["amp_cifar10"]["method"]["paper"]["mean"] == 3.97


# --- end to end on local Ray ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def amp_smoke(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    r = CliRunner().invoke(
        make_app(),
        [
            "reproduce", "amp_cifar10", "--data", "mnist1d", "--epochs", "2", "--seeds", "2",
            "--tracking-uri", uri, "--storage-path", str(tmp / "ray"), "--quiet",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    client = MlflowClient(uri)
    sweep = tracking.find_sweep(client, "amp-cifar10-preactresnet18-repro-smoke")
    assert sweep is not None
    return r.output, client, sweep


def test_the_smoke_reproduction_prints_the_table(amp_smoke):
    output, _, _ = amp_smoke
    assert "### amp_cifar10: AMP vs ERM, PreActResNet18, CIFAR-10" in output
    assert "**Smoke run, not a reproduction**" in output
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["AMP", "ERM", "AMP - ERM"]
    for row in rows[1:3]:  # paper number, then ours at best-val and last epoch over 2 seeds
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert cells[0] in ("3.97 ± 0.091", "5.02 ± 0.212")
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d \(n=2\)", cells[2]), cells
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d \(n=2\)", cells[3]), cells
    assert re.search(r"\| AMP - ERM \| -1\.05 \| - \| [+-]\d+\.\d\d \[", output)


def test_the_smoke_reproduction_is_one_parent_with_2_plus_2_children(amp_smoke):
    _, client, sweep = amp_smoke
    parent = client.get_run(sweep.parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("amp-cifar10-preactresnet18-repro-smoke: ")
    assert parent.data.tags[rp.TAG_PRESET] == "amp_cifar10"
    assert parent.data.tags[rp.TAG_SMOKE] == "mnist1d"
    children = tracking.children(client, sweep)
    by_stage: dict[str, list] = {}
    for c in children:
        by_stage.setdefault(tracking.stage_of(c), []).append(c)
    assert sorted(by_stage) == ["baseline", "finalist"]  # no search stage
    for stage, kind in (("finalist", "amp"), ("baseline", "erm")):
        runs = by_stage[stage]
        assert sorted(int(c.data.tags[tracking.TAG_SEED]) for c in runs) == [1, 2]
        for c in runs:
            assert c.info.status == "FINISHED"
            spec = json.loads(c.data.tags[tracking.TAG_SPEC])
            assert spec["perturbation"]["kind"] == kind
            assert spec["epochs"] == 2 and spec["schedule"]["milestones"] == [1]
            assert spec["data"]["name"] == "mnist1d" and spec["test_at_best_val"]
            assert {"test_acc", "test_acc_at_best_val", "best_val_epoch"} <= set(c.data.metrics)


def test_the_parent_run_holds_the_table_and_its_metrics(amp_smoke):
    output, client, sweep = amp_smoke
    parent = client.get_run(sweep.parent_id)
    m = parent.data.metrics
    finalists = tracking.children(client, sweep, "finalist")
    for key in ("test_acc", "test_acc_at_best_val"):
        assert m[f"reproduce.method.{key}.mean"] == pytest.approx(
            sum(c.data.metrics[key] for c in finalists) / 2
        )
        assert m[f"reproduce.method.{key}.n"] == 2 and m[f"reproduce.baseline.{key}.n"] == 2
        assert math.isfinite(m[f"reproduce.delta.{key}.ci_low"])
    md = Path(client.download_artifacts(sweep.parent_id, "reproduction.md")).read_text()
    assert md.startswith("### amp_cifar10:") and "| AMP - ERM | -1.05 |" in md
    data = json.loads(
        Path(client.download_artifacts(sweep.parent_id, "reproduction.json")).read_text()
    )
    assert data["smoke"] == "mnist1d" and data["seeds"] == [1, 2]
    assert set(data["method"]["run_ids"].values()) == {c.info.run_id for c in finalists}
    # the stored spec is the preset with the overrides, so the run can be told apart from it
    stored = Path(client.download_artifacts(sweep.parent_id, "sweep.yaml")).read_text()
    assert stored.startswith("# sweeps reproduce amp_cifar10 --seeds 2 --epochs 2")
    assert yaml.safe_load(stored)["train"]["data"]["name"] == "mnist1d"


def test_the_awp_smoke_reproduction_reports_robust_accuracy(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = CliRunner().invoke(
        make_app(),
        [
            "reproduce", "awp_cifar10", "--data", "mnist1d", "--epochs", "1", "--seeds", "1",
            "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"), "--quiet",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "test_robust_acc in %" in r.output
    assert "| AT-AWP | - | 55.39 / 54.30 |" in r.output
    assert re.search(r"\| AT-AWP - AT \| - \| \+2\.60 / \+10\.55 \| [+-]\d+\.\d\d \(n=1", r.output)
    client = MlflowClient(uri)
    sweep = tracking.find_sweep(client, "awp-cifar10-preactresnet18-repro-smoke")
    (base,) = tracking.children(client, sweep, "baseline")
    spec = json.loads(base.data.tags[tracking.TAG_SPEC])
    assert spec["perturbation"]["kind"] == "erm" and spec["adversarial"] is not None  # PGD-AT
    assert "test_robust_acc_at_best_val" in base.data.metrics
    parent = client.get_run(sweep.parent_id).data.metrics
    assert parent["reproduce.baseline.test_robust_acc.mean"] == base.data.metrics["test_robust_acc"]
