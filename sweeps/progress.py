"""A live progress display for the driver: trials done / running / best so far (rich)."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from sweeps.tracking import final_flags


class Progress(Callback):
    """Redraws a small table on every Tune step; a plain line per finished trial off a TTY."""

    def __init__(
        self,
        spec: Any,
        slots: int,
        enabled: bool = True,
        stage: str = "search",
        total: int | None = None,
    ) -> None:
        self.name, self.slots, self.stage = spec.name, slots, stage
        self.total = spec.num_samples if total is None else total
        self.metric, self.mode = spec.primary
        self.epochs = spec.train.epochs
        self.enabled = enabled
        self._init()

    def _init(self) -> None:
        self._best: float | None = None
        self._best_trial = ""
        self._done = 0
        self._live: Live | None = None
        self._console = Console(stderr=True)
        self._drawn = 0.0  # when the table was last rebuilt (monotonic s)

    def __getstate__(self) -> dict[str, Any]:
        return {
            k: self.__dict__[k]
            for k in ("name", "total", "slots", "metric", "mode", "epochs", "enabled", "stage")
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init()

    def _count(self, trial: Any) -> None:
        """Count a finished trial toward "best" by the rule the export ranks by
        (``sweeps.tracking.rank_children``): full length, not diverged, not out of memory,
        its last epoch's value. An epoch of a trial ASHA stopped later does not count."""
        last = trial.last_result or {}
        v = last.get(self.metric)
        if (
            not isinstance(v, int | float)
            or not math.isfinite(v)
            or any(final_flags(last, self.epochs).values())
        ):
            return
        better = self._best is None or (v > self._best if self.mode == "max" else v < self._best)
        if better:
            self._best, self._best_trial = float(v), trial.trial_id

    def _table(self, trials: list) -> Table:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        running = sum(t.status == "RUNNING" for t in trials)
        errors = sum(t.status == "ERROR" for t in trials)
        t = Table(title=f"sweep {self.name}: {self.stage}", show_header=True)
        for col in ("done", "running", "errors", "slots", f"best {self.metric}", "trial"):
            t.add_column(col)
        best = "-" if self._best is None else f"{self._best:.4f}"
        t.add_row(
            f"{done}/{self.total}",
            str(running),
            str(errors),
            str(self.slots),
            best,
            self._best_trial or "-",
        )
        return t

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not self.enabled or not self._console.is_terminal:
            return
        # Counting costs O(trials) and Tune steps many times per trial: rebuild at the
        # display's own rate (2/s), not per step, so the cost does not grow as N squared.
        now = time.monotonic()
        if now - self._drawn < 0.5:
            return
        self._drawn = now
        if self._live is None:
            self._live = Live(
                self._table(trials), console=self._console, refresh_per_second=2, transient=False
            )
            self._live.start()
        else:
            self._live.update(self._table(trials))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count(trial)
        if self.enabled and not self._console.is_terminal:
            self._done += 1
            best = "-" if self._best is None else f"{self._best:.4f}"
            # A plain write: rich's print parses markup and measures the line, about 2 ms
            # per finished trial on Tune's event loop.
            self._console.file.write(
                f"[{self.name} {self.stage}] trial {trial.trial_id} done "
                f"({self._done}/{self.total}); best {self.metric} {best}\n"
            )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table(trials))
            self._live.stop()
            self._live = None
