"""Export a sweep's best configs from the MLflow tracking store (works after Ray is gone).

Each file is a complete ``TrainSpec`` (the validated spec with every default the run used) with
a ``provenance`` block (sweep, stage, trial, run id, the device it really trained on, git
revision, metric value and what that value is; for the verdict's winner also the verdict, and
its difference from the baseline with the interval: a "best" config may have tied the
baseline); ``python -m trainers FILE`` re-runs it without Ray or MLflow. The verdict's winner
comes first: confirmed finalists rank above search trials, which were never re-run over seeds.
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
from sweeps.tracking import TAG_DEVICE, TAG_GIT, TAG_SPEC, TAG_TRIAL, export_ranking, find_sweep
from sweeps.uris import redact


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)[:80]


def export_best(
    client: MlflowClient, name: str, *, top: int = 1, out: str | Path = "best", fmt: str = "yaml"
) -> list[Path]:
    """Write the ``top`` best trials of sweep ``name`` into ``out``; return the files."""
    if fmt not in ("yaml", "json"):
        raise SpecError(f"--format must be one of yaml, json, but got {fmt!r}")
    if top < 1:
        raise SpecError(f"--top must be >= 1, but got {top}")
    sweep = find_sweep(client, name)
    if sweep is None:
        raise SpecError(f"name: no sweep {name!r} in {redact(client.tracking_uri)}")
    ranked = export_ranking(client, sweep)[:top]
    if not ranked:
        raise SpecError(f"name: sweep {name!r} has no finished full-length trial to export")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for rank, (run, facts) in enumerate(ranked, start=1):
        spec: dict[str, Any] = json.loads(run.data.tags[TAG_SPEC])
        trial = run.data.tags.get(TAG_TRIAL, run.info.run_id)
        spec["provenance"] = {
            "sweep": name,
            "rank": rank,
            "trial_id": trial,
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            # What the run trained on; the spec keeps the device as asked (``auto``), so a
            # re-run still picks a GPU where there is one.
            "device_used": run.data.tags.get(TAG_DEVICE, "unknown"),
            **facts,
            "git_revision": run.data.tags.get(TAG_GIT, "unknown"),
            "tracking_uri": redact(client.tracking_uri),
        }
        path = out_dir / f"{_safe(name)}-rank{rank}-{_safe(trial)}.{fmt}"
        text = (
            yaml.safe_dump(spec, sort_keys=False)
            if fmt == "yaml"
            else json.dumps(spec, indent=2) + "\n"
        )
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        files.append(path)
    return files
