"""``sweeps.trainable.train_trial`` outside a Tune session: Tune's session functions
(``tune.report``, ``tune.get_checkpoint``) are replaced by recorders, the training is real.

The fault under test, a driver killed after a trial saved its last checkpoint but before it
got that epoch's report, is made real by the driver-loss test in ``test_reliability.py`` only
when the kill happens to land there; here it is made certain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray import tune

from sweeps import trainable
from tests.sweeps.conftest import BASE_TRAIN, sweep_dict

BASE = {**BASE_TRAIN, "epochs": 2, "data": {**BASE_TRAIN["data"], "num_train": 200}}


@pytest.fixture()
def session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Each report's metrics, and a copy of each checkpoint (Tune's is a temporary dir)."""
    seen: dict[str, Any] = {"reports": [], "checkpoints": [], "resume": None}

    def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        seen["reports"].append(dict(metrics))
        if checkpoint is not None:
            copy = tmp_path / f"ckpt{len(seen['checkpoints'])}"
            shutil.copytree(checkpoint.path, copy)
            seen["checkpoints"].append(copy)

    def get_checkpoint() -> Any:
        resume = seen["resume"]
        return None if resume is None else tune.Checkpoint.from_directory(str(resume))

    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable.tune, "get_checkpoint", get_checkpoint)
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
    return seen


def test_a_trial_restored_from_its_last_checkpoint_reports_its_last_epoch_again(session):
    config = {"perturbation.radius": 0.01}
    trainable.train_trial(config, base=BASE, worst={"val_acc": 0.0})
    first = session["reports"]
    assert [r["epoch"] for r in first] == [1, 2]
    last = session["checkpoints"][-1]  # saved with epoch 2's report (the last epoch)

    # The driver died before it recorded epoch 2: the trial resumes from that checkpoint.
    session["reports"], session["resume"] = [], last
    trainable.train_trial(config, base=BASE, worst={"val_acc": 0.0})
    (again,) = session["reports"]  # once, and nothing re-trained
    assert again["epoch"] == 2 and again["restored_from_epoch"] == 2.0
    for key in ("val_acc", "test_acc", "train_loss"):
        assert again[key] == first[-1][key], key


def test_the_driver_checks_a_spec_without_importing_pytorch(tmp_path):
    """A sweep's driver (spec checks, Tune, MLflow, the report) never trains: PyTorch's
    import, about 2 s on a small CPU, belongs to the trial workers, as does the loop's."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(sweep_dict("t")))
    code = (
        "import json, sys\n"
        "import sweeps.cli, sweeps.export, sweeps.report, sweeps.runner, sweeps.trainable\n"
        "from sweeps.spec import load_spec\n"
        "from trainers.models import MODELS\n"
        f"s = load_spec({str(spec)!r})\n"
        "assert s.train.model.name in MODELS\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or m == 'trainers.loop')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1]) == []
