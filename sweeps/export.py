"""Export a sweep's best configs from the MLflow tracking store (works after Ray is gone).

Each file is a complete ``TrainSpec`` with a ``provenance`` block (sweep, trial, run id, git
revision, metric value); ``python -m trainers FILE`` re-runs it without Ray or MLflow.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from sweeps.spec import SpecError
from sweeps.tracking import TAG_GIT, TAG_SPEC, TAG_TRIAL, find_children, find_parent, rank_children


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)[:80]


def export_best(client: MlflowClient, name: str, *, top: int = 1, out: str | Path = "best",
                fmt: str = "yaml") -> list[Path]:
    """Write the ``top`` best trials of sweep ``name`` into ``out``; return the files."""
    if fmt not in ("yaml", "json"):
        raise SpecError(f"--format must be one of yaml, json, but got {fmt!r}")
    if top < 1:
        raise SpecError(f"--top must be >= 1, but got {top}")
    exp = client.get_experiment_by_name(name)
    parent = find_parent(client, exp.experiment_id, name) if exp is not None else None
    if exp is None or parent is None:
        raise SpecError(f"name: no sweep {name!r} in {client.tracking_uri}")
    metric = parent.data.params["metric"]
    mode = parent.data.params["mode"]
    if metric.startswith("["):  # multi-objective: rank by the first objective
        metric, mode = json.loads(metric.replace("'", '"'))[0], json.loads(
            mode.replace("'", '"'))[0]
    ranked = rank_children(find_children(client, exp.experiment_id, parent.info.run_id),
                           metric, mode)[:top]
    if not ranked:
        raise SpecError(f"name: sweep {name!r} has no finished full-length trial to export")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for rank, run in enumerate(ranked, start=1):
        spec: dict[str, Any] = json.loads(run.data.tags[TAG_SPEC])
        trial = run.data.tags.get(TAG_TRIAL, run.info.run_id)
        spec["provenance"] = {
            "sweep": name, "trial_id": trial, "run_id": run.info.run_id, "rank": rank,
            "metric": metric, "mode": mode, "value": run.data.metrics[metric],
            "git_revision": run.data.tags.get(TAG_GIT, "unknown"),
            "tracking_uri": client.tracking_uri,
        }
        path = out_dir / f"{_safe(name)}-rank{rank}-{_safe(trial)}.{fmt}"
        text = (yaml.safe_dump(spec, sort_keys=False) if fmt == "yaml"
                else json.dumps(spec, indent=2) + "\n")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        files.append(path)
    return files
