"""Opening one new database store from several processes at once (sweeps/dbinit.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweeps import dbinit
from tests.sweeps._procs import wait_for

_OPEN_AT_ONCE = """
import os, sys, time
from pathlib import Path
uri, go = sys.argv[1], Path(sys.argv[2])
if uri.endswith(".optuna.db"):
    from sweeps.studies import storage
    open_store = lambda: storage(uri).get_all_studies()
else:
    from sweeps.tracking import open_client
    open_store = lambda: open_client(uri).search_experiments()
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():  # every process imported, then all open the store together
    time.sleep(0.005)
open_store()
"""


@pytest.mark.parametrize("store", ["mlflow", "optuna"])
def test_processes_opening_one_new_sqlite_store_at_once_all_succeed(tmp_path, store):
    # Unguarded, they did not: of four plain MlflowClients three failed building the tables,
    # and of four plain RDBStorages one failed in two of three tries (sweeps/dbinit.py).
    (tmp_path / "new").mkdir()
    uri = f"sqlite:///{tmp_path / 'new' / ('mlflow.db' if store == 'mlflow' else 'x.optuna.db')}"
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_AT_ONCE, uri, str(go)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for _ in range(4)
    ]
    wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 4, 120, "the processes' imports")
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    assert not [e for e in errors if "trying once more" in e]  # the lock did it, not the retry
    if store == "mlflow":
        assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
    else:
        assert optuna.storages.RDBStorage(uri).get_all_studies() == []


class Flaky:
    """A store constructor that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"table already exists ({self.calls})")
        return "store"


@pytest.mark.parametrize(
    "uri", ["sqlite:///{tmp}/m.db", "sqlite:///:memory:", "postgresql://u@127.0.0.1:1/x"]
)
def test_a_database_store_that_fails_once_is_built_again(tmp_path, uri, caplog):
    build = Flaky(1)
    assert dbinit.first_use(uri.format(tmp=tmp_path), build, "the store") == "store"
    assert build.calls == 2
    assert "opening the store failed (table already exists (1)); trying once more" in caplog.text


def test_a_second_failure_is_raised():
    build = Flaky(2)
    with pytest.raises(RuntimeError, match=r"already exists \(2\)"):
        dbinit.first_use("postgresql+psycopg2://u@127.0.0.1:1/x", build, "the store")
    assert build.calls == 2


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_servers_and_file_stores_are_built_once_without_retrying(uri):
    build = Flaky(1)
    with pytest.raises(RuntimeError):
        dbinit.first_use(uri, build, "the store")
    assert build.calls == 1


def test_sqlite_path():
    assert dbinit.sqlite_path("sqlite:////abs/m.db") == "/abs/m.db"
    assert dbinit.sqlite_path("sqlite:///rel/m.db") == "rel/m.db"
    assert dbinit.sqlite_path("postgresql://h/db") is None
