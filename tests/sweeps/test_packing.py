"""Packed GPUs: fractional GPU reservations, and the device each trial really trained on.

The fast tests drive ``trial_device``, the tracker's device tags and the driver's warning
directly. The ``cluster`` tests run real sweeps on a ``ray.cluster_utils.Cluster`` whose two
worker nodes declare one *logical* GPU each (no hardware): ``resources: {cpu: 0.5, gpu: 0.25}``
must pack 4 trials per GPU, and a trial given a GPU on a node without CUDA either trains on CPU
(``device: auto``, recorded as such, warned about once) or fails at once with one line
(``device: cuda``), never hangs.

The sweep drivers are subprocesses (``python -m sweeps``, as a user runs them): the test
process never calls ``ray.init``, so it neither joins nor stops the session's own Ray
(``ray_local``), and the cluster, with its own temp dir, is the only one this module stops.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sweeps.export import export_best
from sweeps.runner import _GpuOnCpuWarning, trials_held
from sweeps.tracking import TAG_DEVICE, TAG_GPU_ON_CPU, TAG_PARENT, MLflowTracker
from sweeps.trainable import trial_device
from tests.sweeps._procs import children, kill_group, start_driver, tune_results, write_spec
from tests.sweeps.conftest import BASE_TRAIN

# -- fast: the pieces ------------------------------------------------------------------------


def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_on_a_node_without_cuda_trains_on_cpu_and_says_the_gpu_sat_idle(monkeypatch):
    _no_cuda(monkeypatch)
    assert trial_device("auto", ["0"]) == {"device_used": "cpu", "gpu_reserved_on_cpu": True}
    assert trial_device("auto", []) == {"device_used": "cpu", "gpu_reserved_on_cpu": False}
    assert trial_device("cpu", [0]) == {"device_used": "cpu", "gpu_reserved_on_cpu": True}


def test_auto_with_cuda_names_the_device_it_used(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    assert trial_device("auto", ["0"]) == {"device_used": "cuda:0", "gpu_reserved_on_cpu": False}
    assert trial_device("cuda:0", ["0"])["device_used"] == "cuda:0"


@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "cuda:1"])
def test_a_cuda_device_without_cuda_fails_with_one_line_naming_the_field(monkeypatch, requested):
    _no_cuda(monkeypatch)
    with pytest.raises(RuntimeError) as e:
        trial_device(requested, ["0"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"train.device is {requested!r}")
    assert "use train.device auto" in msg and "Ray reserved GPU ids ['0']" in msg


def test_a_cuda_index_the_worker_does_not_see_is_refused(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    with pytest.raises(RuntimeError, match=r"sees 1 CUDA device.*cuda:0\.\.cuda:0$"):
        trial_device("cuda:1", ["3"])


@dataclass
class _Trial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"perturbation.radius": 0.01})
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)


def test_the_device_used_becomes_tags_of_finished_failed_and_killed_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"flatsweep.role": "parent"}).info.run_id
    tracker = MLflowTracker(uri, exp, parent, "t", {**BASE_TRAIN, "device": "auto"}, 2)
    tracker._outbox.interval_s = 0.0
    result = {"epoch": 1, "val_acc": 0.5, "train_loss": 1.0, "training_iteration": 1}
    done, failed, killed, silent = (_Trial(t) for t in ("done", "failed", "killed", "silent"))
    for trial, device in ((done, "cpu"), (failed, "cpu"), (killed, "cuda:0")):
        tracker.on_trial_start(0, [], trial)
        report = {**result, "device_used": device, "gpu_reserved_on_cpu": device == "cpu"}
        tracker.on_trial_result(0, [], trial, report)
        trial.last_result = report
    tracker.on_trial_start(0, [], silent)  # fails before its first report
    tracker.on_trial_complete(0, [], done)
    tracker.on_trial_error(0, [], failed)
    tracker.on_trial_error(0, [], silent)
    tracker.on_experiment_end([done, failed, killed, silent])  # killed: still open
    runs = {
        r.data.tags["flatsweep.trial_id"]: r
        for r in client.search_runs([exp], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    }
    assert {t: r.info.status for t, r in runs.items()} == {
        "done": "FINISHED",
        "failed": "FAILED",
        "killed": "KILLED",
        "silent": "FAILED",
    }
    tags = {
        t: (r.data.tags.get(TAG_DEVICE), r.data.tags.get(TAG_GPU_ON_CPU)) for t, r in runs.items()
    }
    assert tags == {
        "done": ("cpu", "1"),
        "failed": ("cpu", "1"),
        "killed": ("cuda:0", "0"),
        "silent": (None, None),
    }
    # The param keeps what the spec asked for; the string is no metric.
    assert runs["done"].data.params["device"] == "auto"
    assert "device_used" not in runs["done"].data.metrics
    assert "gpu_reserved_on_cpu" not in runs["done"].data.metrics


def test_gpu_reservations_on_cpu_are_warned_about_once(caplog):
    warning = _GpuOnCpuWarning("packed", 0.25, "auto")
    with caplog.at_level(logging.WARNING, logger="sweeps.runner"):
        warning.on_trial_result(0, [], _Trial("a"), {"gpu_reserved_on_cpu": False})
        assert not caplog.records
        for tid in ("b", "c", "d"):
            warning.on_trial_result(0, [], _Trial(tid), {"gpu_reserved_on_cpu": True})
    (record,) = caplog.records
    assert "trial b was reserved resources.gpu=0.25 but trains on CPU" in record.getMessage()


def test_trials_are_counted_node_by_node():
    two = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert trials_held(two, 0.5, 0.25) == 8  # four per GPU, which the CPUs hold too
    # The cluster's sums (4 CPUs, 2 GPUs) would say five: a trial cannot span two nodes.
    assert trials_held(two, 0.75, 0) == 4
    assert trials_held(two, 0.5, 0.4) == 4
    assert trials_held([{"CPU": 0.0}, *two], 1, 0) == 4  # a head without CPUs holds none
    assert trials_held([{"CPU": 8.0}], 1, 0.5) == 0  # no GPU on it
    assert trials_held([{"CPU": 0.3}], 0.1, 0) == 3  # 0.3 / 0.1 is 2.9999999999999996


# -- cluster: real sweeps on logical GPUs ----------------------------------------------------

#: Tiny trials: packing is about how many run at once, not how long they take.
TINY_TRAIN = {
    **BASE_TRAIN,
    "data": {"name": "mnist1d", "num_train": 300, "num_test": 300},
    "epochs": 2,
    "device": "auto",
}
#: A bound no healthy run comes near on a loaded 2-core machine: past it, the sweep hung.
DRIVER_TIMEOUT_S = 480

SLOTS = """
import json, sys
import ray, yaml
from sweeps.runner import _slots
from sweeps.spec import SweepSpec
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
spec = SweepSpec.model_validate(yaml.safe_load(open(sys.argv[2])))
uneven = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpu": 0.4})})
print(json.dumps({"slots": _slots(spec, 100), "uneven": _slots(uneven, 100),
                  "resources": ray.cluster_resources()}))
"""


@dataclass
class _Cluster:
    address: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[_Cluster]:
    """A head without resources and two workers of 2 CPUs and 1 logical GPU each."""
    from ray.cluster_utils import Cluster

    # Short: Ray's socket paths must fit in 107 bytes. Its own temp dir, and RAY_TMPDIR for the
    # "current cluster" file Cluster writes, so no other Ray on this machine is disturbed.
    temp = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    ray_dir = f"{temp}/ray"  # Ray's own layout: $RAY_TMPDIR/ray holds its sessions
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", temp)
        # num_gpus 0 on the head: else Ray counts a real GPU there too.
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={"num_cpus": 0, "num_gpus": 0, "temp_dir": ray_dir},
        )
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=2, num_gpus=1, temp_dir=ray_dir)
            cluster.wait_for_nodes()
            yield _Cluster(cluster.address, {"RAY_ADDRESS": cluster.address, "RAY_TMPDIR": temp})
        finally:
            cluster.shutdown()  # only this module's cluster
            shutil.rmtree(temp, ignore_errors=True)


def _sweep(tmp: Path, cluster: _Cluster, name: str, **over: Any) -> tuple[int, str]:
    """Run ``sweeps run`` against the cluster; its exit code and log (a hang fails)."""
    spec = write_spec(tmp, name, f"sqlite:///{tmp / 'mlflow.db'}", **over)
    proc = start_driver(["run", str(spec)], tmp, env=cluster.env, log_name=f"{name}.log")
    try:
        rc = proc.wait(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"sweep {name} hung: still running after {DRIVER_TIMEOUT_S} s")
    return rc, (tmp / f"{name}.log").read_text()


def _most_at_once(intervals: list[tuple[int, int]]) -> int:
    """The largest number of [start, end) intervals that share one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in events:  # at equal times an end (-1) sorts first: touching is not overlap
        now += step
        most = max(most, now)
    return most


@pytest.mark.cluster
def test_quarter_gpus_pack_four_trials_per_logical_gpu_and_record_the_cpu_they_ran_on(
    gpu_cluster, tmp_path
):
    over = {
        "train": TINY_TRAIN,
        "num_samples": 8,
        "resources": {"cpu": 0.5, "gpu": 0.25},
        "scheduler": {"name": "fifo"},
    }
    spec_path = write_spec(tmp_path, "packed", f"sqlite:///{tmp_path / 'mlflow.db'}", **over)
    slots = subprocess.run(
        [sys.executable, "-c", SLOTS, gpu_cluster.address, str(spec_path)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **gpu_cluster.env},
        check=True,
    )
    computed = json.loads(slots.stdout.strip().splitlines()[-1])
    assert computed["resources"]["GPU"] == 2 and computed["resources"]["CPU"] == 4
    assert computed["slots"] == 8  # 4 per logical GPU, which the CPUs (4 / 0.5) also hold
    assert computed["uneven"] == 4  # 2 per GPU at 0.4 each; the sums (2 / 0.4) would say 5

    rc, log = _sweep(tmp_path, gpu_cluster, "packed", **over)
    assert rc == 0, log[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kids = children(client, "packed")
    assert len(kids) == 8 and {k.info.status for k in kids} == {"FINISHED"}
    # Run dates are Tune's: start when the trial's actor started, end when it completed.
    at_once = _most_at_once([(k.info.start_time, k.info.end_time) for k in kids])
    pids = {rows[-1]["pid"] for rows in tune_results(tmp_path / "ray" / "packed").values()}
    print(f"packed: {at_once} of 8 trials at once, in {len(pids)} worker processes")
    assert at_once == 8
    assert len(pids) == 8

    cuda = torch.cuda.is_available()  # a machine with real GPUs behind the logical ones
    assert {k.data.tags[TAG_DEVICE] for k in kids} == ({"cuda:0"} if cuda else {"cpu"})
    assert {k.data.tags[TAG_GPU_ON_CPU] for k in kids} == ({"0"} if cuda else {"1"})
    assert {k.data.params["device"] for k in kids} == {"auto"}  # what was asked
    warned = [line for line in log.splitlines() if "trains on CPU" in line]
    assert len(warned) == (0 if cuda else 1), log[-3000:]

    (exported,) = export_best(client, "packed", out=tmp_path / "best")
    provenance = yaml.safe_load(exported.read_text())["provenance"]
    assert provenance["device_used"] == ("cuda:0" if cuda else "cpu")


@pytest.mark.cluster
def test_a_cuda_trial_on_a_node_without_cuda_fails_at_once_with_one_line(gpu_cluster, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA behind the logical GPUs")
    rc, log = _sweep(
        tmp_path,
        gpu_cluster,
        "nocuda",
        train={**TINY_TRAIN, "device": "cuda"},
        num_samples=2,
        resources={"cpu": 0.5, "gpu": 0.25},
        scheduler={"name": "fifo"},
        failure={"max_failures": 0},
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kids = children(client, "nocuda")
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FAILED"}, log[-3000:]
    errors = list((tmp_path / "ray" / "nocuda").glob("*/error.txt"))
    assert len(errors) == 2
    for path in errors:
        last = path.read_text().strip().splitlines()[-1]
        assert last.startswith("RuntimeError: train.device is 'cuda', but this trial's worker")
        assert "use train.device auto" in last
    # a sweep whose every trial failed never reports success
    assert rc == 1, log[-3000:]
    assert "failed: every one of the 2 search trials failed" in log
    exp = client.get_experiment_by_name("nocuda")
    parent = client.search_runs([exp.experiment_id], "tags.`flatsweep.role` = 'parent'")[0]
    assert parent.info.status == "FAILED"
