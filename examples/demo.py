"""``make demo``: run the quickstart sweep, export its best config, say how to browse it.

Idempotent: a second run resumes the same sweep (a no-op once finished) instead of refusing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweeps.export import export_best
from sweeps.runner import run_sweep
from sweeps.spec import SpecError, load_spec
from sweeps.tracking import find_parent

QUICKSTART = Path(__file__).resolve().parent / "quickstart.yaml"


def main() -> int:
    try:
        spec = load_spec(QUICKSTART)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    client = MlflowClient(spec.resolved_tracking_uri())
    exp = client.get_experiment_by_name(spec.name)
    exists = exp is not None and find_parent(client, exp.experiment_id, spec.name) is not None
    result = run_sweep(spec, QUICKSTART.read_text(), resume=exists)
    files = export_best(client, spec.name, top=1, out="best")
    metric = spec.primary[0]
    print()
    print(
        f"sweep {spec.name!r}: {result.num_trials} trials; best {metric} = "
        f"{result.best[metric]:.4f}"
        if result.best
        else f"sweep {spec.name!r} finished"
    )
    print(f"best config exported to: {files[0]}")
    print(f"re-run it without Ray:   .venv/bin/python -m trainers {files[0]}")
    print(
        "open the MLflow UI:      .venv/bin/mlflow ui --backend-store-uri "
        f"{result.tracking_uri} --host 127.0.0.1 --port 5000"
    )
    print(f"then browse:             {result.ui_url()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
