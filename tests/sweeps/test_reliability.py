"""Nothing lost, proven with real processes: MLflow server on PostgreSQL + S3, tracking
outages, node loss, driver loss, OOM and divergence, killed trial processes.

Slow (each test starts its own Ray and servers): marked ``cluster``, run by ``make test-cluster``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.sweeps._procs import (
    BIN,
    SERVER_ENV,
    MlflowServer,
    children,
    free_port,
    kill_group,
    start_driver,
    tune_snapshot,
    wait_for,
    wait_http,
    write_spec,
)

pytestmark = pytest.mark.cluster

LONG_TRAIN = {
    "model": {"name": "cnn1d"},
    "data": {"name": "mnist1d", "num_train": 2000, "num_test": 300},
    "optim": {"lr": 0.1},
    "perturbation": {"kind": "amp"},
    "epochs": 8,
    "batch_size": 100,
    "device": "cpu",
}


def optuna_states(exp_dir: Path) -> Counter:
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    limiter = ConcurrencyLimiter(OptunaSearch(), max_concurrent=1)
    limiter.restore_from_dir(str(exp_dir))
    return Counter(t.state.name for t in limiter.searcher._ot_study.trials)


def epochs_logged(client: MlflowClient, run) -> int:  # noqa: ANN001
    return len(client.get_metric_history(run.info.run_id, "val_acc"))


def trial_dir_glob(trial_id: str) -> str:
    """The pattern of a trial's directory under the experiment's (Tune names it after the
    trainable, ``train_trial``, and the trial id)."""
    return f"train_trial_{trial_id}_*"


def keep_latest_checkpoint(exp_dir: Path, trial_id: str) -> float:
    """Delete all but the trial's latest checkpoint; return the epoch it holds (0: none)."""
    from trainers.checkpoint import load_checkpoint

    (trial_dir,) = exp_dir.glob(trial_dir_glob(trial_id))
    by_epoch = sorted((load_checkpoint(d)["epoch"], d) for d in trial_dir.glob("checkpoint_*"))
    for _, d in by_epoch[:-1]:
        shutil.rmtree(d)
    return float(by_epoch[-1][0]) if by_epoch else 0.0


def sqlite(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


@pytest.fixture
def s3(tmp_path):
    import boto3

    port = free_port()
    log = open(tmp_path / "moto.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", 60)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="flatsweep-test")
        yield endpoint, client
    finally:
        kill_group(proc, signal.SIGTERM)


@pytest.fixture
def server(tmp_path, s3):
    srv = MlflowServer(tmp_path, s3[0])
    srv.start()
    try:
        yield srv
    finally:
        srv.drop()


def test_runs_and_artifacts_land_in_the_server_on_postgres_and_s3(tmp_path, server, s3):
    import psycopg2

    spec = write_spec(tmp_path, "pg-s3", server.uri, num_samples=2)
    proc = start_driver(["run", str(spec)], tmp_path, env=server.env)
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    client = MlflowClient(server.uri)
    kids = children(client, "pg-s3")
    assert len(kids) == 2 and {k.info.status for k in kids} == {"FINISHED"}
    # the runs are rows in PostgreSQL ...
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=server.db)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 3
    conn.close()
    # ... and the parent's artifacts are objects in S3
    keys = [o["Key"] for o in s3[1].list_objects_v2(Bucket="flatsweep-test")["Contents"]]
    assert any(k.endswith("/sweep.yaml") for k in keys), keys
    assert any(k.endswith("/search_space.json") for k in keys), keys


def test_a_30_second_tracking_outage_loses_nothing(tmp_path, server):
    # 30 epochs (about 0.3 s each on a fast machine) keep the trials training through the
    # outage: with 8, a fast CI machine once finished the sweep's writes before the server stopped.
    epochs = 30
    spec = write_spec(
        tmp_path,
        "outage",
        server.uri,
        num_samples=4,
        train={**LONG_TRAIN, "epochs": epochs},
        scheduler={"name": "fifo"},
    )
    proc = start_driver(["run", str(spec)], tmp_path, env=server.env)
    client = MlflowClient(server.uri)
    wait_for(
        lambda: any(k.data.metrics.get("val_acc") is not None for k in children(client, "outage")),
        300,
        "a first epoch in MLflow",
    )
    server.stop()
    assert proc.poll() is None, "the sweep ended before the outage began"
    time.sleep(30)
    server.start()
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    log = (tmp_path / "driver.log").read_text()
    assert "buffering and retrying" in log  # the outage really hit the driver
    # ... whose rounds went in bulk (the server runs flatsweep's app), before and after it.
    served = (tmp_path / "mlflow-server.log").read_text()
    assert served.count('POST /api/2.0/flatsweep/runs/bulk-write HTTP/1.1" 200') >= 2, served[
        -2000:
    ]
    kids = children(client, "outage")
    assert len(kids) == 4
    for k in kids:
        assert k.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(k.info.run_id, "val_acc"))
        assert steps == list(range(1, epochs + 1)), (k.data.tags["flatsweep.trial_id"], steps)


def test_node_loss_restores_trials_from_checkpoints(tmp_path):
    from ray.cluster_utils import Cluster

    # Nodes keep the machine's own address: a driver's ray.init turns 127.0.0.1 into it
    # (ray._private.services.resolve_ip_for_localhost), so a loopback-only GCS is unreachable.
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=1)
        doomed = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # Long enough (about 0.3 s an epoch) that the node surely dies mid-trial, although the
        # MLflow view this test polls trails the trials by the writer's 1 s rounds.
        train = {**LONG_TRAIN, "epochs": 30}
        spec = write_spec(
            tmp_path,
            "nodeloss",
            sqlite(tmp_path),
            num_samples=3,
            train=train,
            scheduler={"name": "fifo"},
            checkpoint_every_s=0,
            failure={"max_failures": 3},
        )
        proc = start_driver(["run", str(spec)], tmp_path, env={"RAY_ADDRESS": cluster.address})
        client = MlflowClient(sqlite(tmp_path))

        def two_running_past_epoch_2() -> bool:
            kids = [k for k in children(client, "nodeloss") if k.info.status == "RUNNING"]
            return sum(epochs_logged(client, k) >= 2 for k in kids) >= 2

        wait_for(two_running_past_epoch_2, 300, "two trials past epoch 2")
        cluster.remove_node(doomed, allow_graceful=False)
        assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        cluster.shutdown()
    kids = children(client, "nodeloss")
    assert len(kids) == 3  # no duplicate child runs
    assert {k.info.status for k in kids} == {"FINISHED"}
    restored = [k.data.metrics.get("restored_from_epoch", 0) for k in kids]
    assert max(restored) >= 2, restored  # resumed from its checkpoint, not from scratch
    for k in kids:
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 31))  # every epoch once, none twice


def checkpoints_written(exp_dir: Path, trial_id: str) -> int:
    """How many checkpoints the trial's worker has written (one per epoch here), from their
    directories' indices: on disk as soon as written, ahead of MLflow's view."""
    written = exp_dir.glob(f"{trial_dir_glob(trial_id)}/checkpoint_*")
    indices = [int(d.name.rsplit("_", 1)[1]) for d in written]
    return max(indices, default=-1) + 1


def test_driver_loss_then_resume_finishes_without_rerunning_or_duplicates(tmp_path, ray_head):
    epochs = 20
    # 20 epochs of 9000 MNIST-1D examples: about 30 s a trial on a 2-core EPYC (40 took about
    # 15 s on a fast machine). The kill below waits on Tune's own snapshot, not on wall-clock
    # margins, so trials need only be long enough to be killed mid-training.
    train = {
        **LONG_TRAIN,
        "epochs": epochs,
        "data": {"name": "mnist1d", "num_train": 9000, "num_test": 300},
    }
    spec = write_spec(
        tmp_path,
        "driverloss",
        sqlite(tmp_path),
        # Two at a time: the kill comes early in the second round, so the resumed driver has
        # interrupted trials to restore and new ones to suggest (a sixth trial took another
        # round and tested nothing more).
        num_samples=5,
        train=train,
        scheduler={"name": "fifo"},
        checkpoint_every_s=0,
    )
    proc = start_driver(["run", str(spec)], tmp_path, env=ray_head)
    client = MlflowClient(sqlite(tmp_path))
    exp_dir = tmp_path / "ray" / "driverloss"

    def finished_and_mid_training() -> bool:
        # The state whose resume this test checks, read from Tune's snapshot (the resumed
        # Tune's only memory; a trial started after it is unknown there, and one without a
        # checkpoint in it restarts from scratch): a trial that ended there and in MLflow,
        # every trial MLflow shows running known there with a checkpoint, and one of them in
        # the first half of its training, so that it is still training when the kill lands
        # (the workers run on for up to 3 s after their driver dies).
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        snapshot = tune_snapshot(exp_dir)
        if not snapshot:
            return False
        kids = {k.data.tags["flatsweep.trial_id"]: k for k in children(client, "driverloss")}
        running = [t for t, k in kids.items() if k.info.status == "RUNNING"]
        ended = [t for t, k in kids.items() if k.info.status == "FINISHED"]
        return (
            any(snapshot.get(t, ("",))[0] == "TERMINATED" for t in ended)
            and all(snapshot.get(t) == ("RUNNING", True) for t in running)
            and any(0 < checkpoints_written(exp_dir, t) <= epochs // 2 for t in running)
        )

    wait_for(finished_and_mid_training, 300, "a finished trial and one mid-training", 0.2)
    kill_group(proc)  # SIGKILL: no cleanup at all
    before = {k.data.tags["flatsweep.trial_id"]: k for k in children(client, "driverloss")}
    snapshot = tune_snapshot(exp_dir)  # the last one the killed driver wrote
    assert snapshot is not None, "the killed driver left a partly copied snapshot"
    finished = {
        t: k
        for t, k in before.items()
        if k.info.status == "FINISHED" and snapshot.get(t, ("",))[0] == "TERMINATED"
    }
    assert finished, "no trial finished before the kill"
    interrupted = [t for t, k in before.items() if k.info.status == "RUNNING"]
    assert interrupted, "nothing was interrupted"
    # Tune deletes a trial's old checkpoints before its (up to 2 s older) snapshot is written,
    # so a killed driver can leave a snapshot naming deleted ones. Make that state certain:
    # keep only each interrupted trial's latest checkpoint, as Tune's deletion may have.
    time.sleep(3)  # the job's trial workers die with their driver
    latest = {t: keep_latest_checkpoint(exp_dir, t) for t in interrupted}
    # A trial can end in Tune with its FINISHED still in the MLflow writer's queue at the kill
    # (writes go out in 1-s rounds): RUNNING in MLflow, its last checkpoint at its last epoch.
    # It has nothing to resume; the resumed driver closes its run from Tune's results instead.
    ended_unrecorded = {t for t, epoch in latest.items() if epoch >= epochs}
    latest = {t: epoch for t, epoch in latest.items() if epoch < epochs}
    print(f"killed: finished {sorted(finished)}, interrupted at {latest}, {ended_unrecorded=}")
    assert latest, "no trial was interrupted mid-training"

    resume = start_driver(
        ["resume", "driverloss", "--tracking-uri", sqlite(tmp_path)],
        tmp_path,
        env=ray_head,
        log_name="resume.log",
    )
    assert resume.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    after = {k.data.tags["flatsweep.trial_id"]: k for k in children(client, "driverloss")}
    assert len(after) == 5  # the remaining trials ran, and no child run twice
    assert {k.info.status for k in after.values()} == {"FINISHED"}
    for tid, epoch in latest.items():  # resumed from the checkpoint left, not from scratch
        restored = client.get_metric_history(after[tid].info.run_id, "restored_from_epoch")
        assert max(m.value for m in restored) >= epoch > 0, (tid, epoch)
    for tid in ended_unrecorded:  # recorded from Tune's results, or from its final
        run = after[tid]  # checkpoint, its last epoch reported again: never re-trained
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == epochs
        assert "test_acc" in run.data.metrics, tid
        restored = client.get_metric_history(run.info.run_id, "restored_from_epoch")
        assert max(m.value for m in restored) in (0, epochs), tid
    for tid, k in finished.items():  # finished trials were not re-run
        assert after[tid].info.end_time == k.info.end_time
        assert len(client.get_metric_history(k.info.run_id, "val_acc")) == epochs
    exp = client.get_experiment_by_name("driverloss")
    parent = client.search_runs([exp.experiment_id], "tags.`flatsweep.role` = 'parent'")[0]
    assert parent.info.status == "FINISHED"
    # the Optuna study survived: one trial per sample, none left running
    states = optuna_states(tmp_path / "ray" / "driverloss")
    assert sum(states.values()) == 5 and states["COMPLETE"] == 5, states
    # and its stored copy agrees with MLflow: every trial once, each linked to its run
    import optuna

    stored = optuna.load_study(
        study_name="driverloss", storage=f"sqlite:///{tmp_path / 'mlflow.optuna.db'}"
    )
    by_trial = {t.user_attrs["flatsweep.trial_id"]: t for t in stored.trials}
    assert len(stored.trials) == len(by_trial) == 5, [t.state for t in stored.trials]
    assert {t.state.name for t in stored.trials} == {"COMPLETE"}
    links = stored.user_attrs["mlflow_run_ids"]
    assert {links[t] for t in by_trial} == {k.info.run_id for k in after.values()}


def writer_processes(driver: int) -> list[int]:
    """The MLflow writer processes (``sweeps.writer_process``) that ``driver`` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if ppid == driver and b"sweeps.writer_process" in command:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_writer_process_loses_no_finished_trial_after_resume(tmp_path):
    # The OOM killer takes the driver's MLflow writer process mid-stage. The trials finish in
    # Tune with their last writes owed, so the sweep ends FAILED; MLflow itself is up and
    # takes the close, which marks their runs KILLED. The resume must deliver those writes
    # from Tune's results: every epoch, test_acc, and FINISHED.
    epochs = 30  # the trials are still training when the writer dies
    spec = write_spec(
        tmp_path,
        "writerkill",
        sqlite(tmp_path),
        num_samples=2,
        train={**LONG_TRAIN, "epochs": epochs},
        scheduler={"name": "fifo"},
    )
    env = {"FLATSWEEP_MLFLOW_PROCESS": "1", "FLATSWEEP_DRAIN_TIMEOUT_S": "10"}
    client = MlflowClient(sqlite(tmp_path))
    proc = start_driver(["run", str(spec)], tmp_path, env=env)
    try:
        wait_for(
            lambda: any(
                k.data.metrics.get("val_acc") is not None for k in children(client, "writerkill")
            ),
            300,
            "a first epoch in MLflow",
        )
        (writer,) = wait_for(lambda: writer_processes(proc.pid), 30, "the writer process")
        assert proc.poll() is None, "the sweep ended before its writer was killed"
        os.kill(writer, signal.SIGKILL)
        assert proc.wait(timeout=600) == 1, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        kill_group(proc)  # and whatever of its local Ray outlived it
    assert (
        "MLflow writes of the search stage were not delivered"
        in (tmp_path / "driver.log").read_text()
    )
    # Nothing left RUNNING, nothing claimed finished.
    assert {k.info.status for k in children(client, "writerkill")} == {"KILLED"}

    resume = start_driver(
        ["resume", "writerkill", "--tracking-uri", sqlite(tmp_path)],
        tmp_path,
        env=env,
        log_name="resume.log",
    )
    try:
        assert resume.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        kill_group(resume)
    exp = client.get_experiment_by_name("writerkill")
    parent = client.search_runs([exp.experiment_id], "tags.`flatsweep.role` = 'parent'")[0]
    assert parent.info.status == "FINISHED"
    kids = children(client, "writerkill")
    assert len(kids) == 2
    for k in kids:
        assert k.info.status == "FINISHED", k.data.tags["flatsweep.trial_id"]
        steps = sorted(m.step for m in client.get_metric_history(k.info.run_id, "val_acc"))
        assert steps == list(range(1, epochs + 1)), steps
        assert "test_acc" in k.data.metrics


def test_oom_and_diverged_trials_are_recorded_and_told_to_optuna_correctly(tmp_path):
    # An MLP whose first layer needs 320 GB: the CPU allocator refuses it, a real OOM.
    oom = dict(LONG_TRAIN, model={"name": "mlp", "args": {"hidden": 2_000_000_000}}, epochs=2)
    spec = write_spec(
        tmp_path, "oom", sqlite(tmp_path), num_samples=2, train=oom, scheduler={"name": "fifo"}
    )
    proc = start_driver(["run", str(spec)], tmp_path)
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    diverge = dict(LONG_TRAIN, optim={"lr": 1e6, "momentum": 0.0}, epochs=2)
    spec = write_spec(
        tmp_path, "nan", sqlite(tmp_path), num_samples=2, train=diverge, scheduler={"name": "fifo"}
    )
    proc = start_driver(["run", str(spec)], tmp_path)
    assert proc.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-3000:]

    client = MlflowClient(sqlite(tmp_path))
    for k in children(client, "oom"):
        assert k.info.status == "FINISHED" and k.data.tags["flatsweep.oom"] == "1"
        assert "val_acc" not in k.data.metrics
    # OOM: not a bad objective, so Optuna records the trials as pruned, none left running
    assert optuna_states(tmp_path / "ray" / "oom") == Counter({"PRUNED": 2})
    for k in children(client, "nan"):
        assert k.info.status == "FINISHED" and k.data.tags["flatsweep.diverged"] == "1"
        assert k.data.metrics["val_acc"] == 0.0
    # divergence: a finite worst value, so the study learns the region is bad
    assert optuna_states(tmp_path / "ray" / "nan") == Counter({"COMPLETE": 2})


def test_a_killed_trial_process_leaves_its_run_failed_not_running(tmp_path):
    from tests.sweeps._procs import descends_from, tune_results

    # The process killed is provably mid-trial on fast and slow machines alike: the one trial
    # has `epochs` epochs (minutes of work), the pid is the one Tune recorded with the trial's
    # latest result while that result is not halfway, and Tune's record is checked again
    # after. (A worker picked by its process title may be a reused actor whose trial ended.)
    epochs = 1000
    spec = write_spec(
        tmp_path,
        "orphan",
        sqlite(tmp_path),
        num_samples=1,
        train={**LONG_TRAIN, "epochs": epochs},
        scheduler={"name": "fifo"},
        failure={"max_failures": 0},
    )
    exp_dir = tmp_path / "ray" / "orphan"
    proc = start_driver(["run", str(spec)], tmp_path)
    try:
        ((trial_id, rows),) = wait_for(
            lambda: tune_results(exp_dir), 300, "the trial's first result in Tune's result.json"
        ).items()
        latest = rows[-1]
        # Our own sweep's trial (its local Ray runs under the driver), far from its end.
        assert descends_from(latest["pid"], proc.pid), latest
        assert latest["training_iteration"] < epochs // 2, latest
        os.kill(latest["pid"], signal.SIGKILL)
        # Its only trial failed, so the sweep did not succeed: FAILED, exit 1, in one line.
        assert proc.wait(timeout=600) == 1, (tmp_path / "driver.log").read_text()[-3000:]
        assert (
            "failed: every one of the 1 search trials failed"
            in (tmp_path / "driver.log").read_text()
        )
    finally:
        kill_group(proc)  # and whatever of its local Ray outlived it
    reached = max(r["training_iteration"] for r in tune_results(exp_dir)[trial_id])
    assert reached < epochs, f"the trial finished all {epochs} epochs: it was not killed"
    (run,) = children(MlflowClient(sqlite(tmp_path)), "orphan")
    assert run.data.tags["flatsweep.trial_id"] == trial_id
    assert run.info.status == "FAILED", run.info


# MLflow's default server (uvicorn), and gunicorn as infra/ starts it (test_configs checks that
# up.sh, compose, k8s and the image agree on these options).
SERVERS = {"uvicorn": [], "gunicorn": ["--gunicorn-opts", "--timeout 300 --no-control-socket"]}


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_basic_auth_server_refuses_anonymous_and_the_default_password(tmp_path, kind):
    import base64
    import urllib.error
    import urllib.request

    port = free_port()
    ini = tmp_path / "auth.ini"
    password = os.urandom(12).hex()
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        **SERVER_ENV,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
    }
    log = open(tmp_path / "auth-server.log", "ab")  # noqa: SIM115
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--workers",
            "1",
            *SERVERS[kind],
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"

        def status(user: str | None, pw: str | None) -> int:
            req = urllib.request.Request(url)
            if user is not None:
                token = base64.b64encode(f"{user}:{pw}".encode()).decode()
                req.add_header("Authorization", f"Basic {token}")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status(None, None) == 401
        assert status("admin", "password1234") == 401  # MLflow's shipped default
        assert status("admin", password) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:  # noqa: S310
            assert r.headers["Server"].startswith(kind), r.headers
    finally:
        kill_group(server, signal.SIGTERM)


def test_crash_safe_checkpoint_write_killed_halfway(tmp_path):
    """A process killed inside save_checkpoint leaves the previous checkpoint intact."""
    code = (
        "import os, sys, torch\n"
        "from trainers.checkpoint import save_checkpoint\n"
        "d = sys.argv[1]\n"
        "save_checkpoint(d, {'epoch': 1, 'w': torch.zeros(10)})\n"
        "real = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    f.write(b'PK\\x03\\x04 half a zip')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), 9)\n"
        "torch.save = dying_save\n"
        "save_checkpoint(d, {'epoch': 2, 'w': torch.ones(10)})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert leftovers and all(n.startswith(".checkpoint.pt.tmp-") for n in leftovers)
    from trainers.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path)["epoch"] == 1
