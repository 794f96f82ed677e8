"""``python -m trainers CONFIG.yaml``: train one TrainSpec without Ray or MLflow.

Prints the final metrics as one JSON line on stdout: the last epoch's, with the test set
measured once after it (``trainers.FINAL_METRICS``). Exported best configs re-run this way.
A bad config is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from trainers.checkpoint import checkpoint_path
from trainers.loop import fit
from trainers.spec import TrainSpec, format_validation_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__)
    parser.add_argument("config", type=Path, help="a TrainSpec YAML file (or an exported config)")
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="write a checkpoint after every epoch and resume from it if present",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the spec's epochs")
    args = parser.parse_args(argv)

    try:
        if not args.config.is_file():
            raise ValueError(f"config file {str(args.config)!r} does not exist")
        raw = TrainSpec.from_yaml(args.config)
        spec = raw if args.epochs is None else raw.model_copy(update={"epochs": args.epochs})
        spec = TrainSpec.model_validate(spec.model_dump())
    except ValidationError as e:
        print(f"error: {format_validation_error(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    resume = None
    callback = None
    if args.checkpoint_dir is not None:
        if checkpoint_path(args.checkpoint_dir).is_file():
            resume = args.checkpoint_dir

        def callback(metrics: dict[str, float], save) -> None:  # noqa: ANN001
            save(args.checkpoint_dir)
            print(json.dumps({"progress": metrics}), file=sys.stderr)

    try:
        result = fit(spec, on_epoch_end=callback, resume=resume)
    except ValueError as e:  # data root missing, checkpoint from another spec, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"status": result.status, "message": result.message, **result.final}))
    return 0 if result.status != "diverged" else 1


if __name__ == "__main__":
    sys.exit(main())
