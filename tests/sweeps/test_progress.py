"""The live display's "best so far" follows the export's ranking rule, not any epoch's value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sweeps.progress import Progress
from sweeps.spec import SweepSpec
from tests.sweeps.conftest import sweep_dict


@dataclass
class _Trial:
    trial_id: str
    last_result: dict[str, Any] = field(default_factory=dict)


def test_best_counts_only_finished_full_length_trials():
    spec = SweepSpec.model_validate(sweep_dict("p"))  # 3 epochs, test_acc, max
    progress = Progress(spec, slots=2, enabled=False)
    trials = [
        _Trial("full", {"epoch": 3, "val_acc": 0.90}),
        _Trial("asha-stopped", {"epoch": 1, "val_acc": 0.95}),
        _Trial("diverged", {"epoch": 3, "val_acc": 0.99, "diverged": 1.0}),
        _Trial("oom", {"oom": 1.0}),
        _Trial("worse", {"epoch": 3, "val_acc": 0.80}),
    ]
    for trial in trials:
        progress.on_trial_result(0, trials, trial, trial.last_result)
        progress.on_trial_complete(0, trials, trial)
    assert (progress._best, progress._best_trial) == (0.90, "full")


def test_the_terminal_table_is_rebuilt_at_the_display_rate_not_per_step(monkeypatch):
    spec = SweepSpec.model_validate(sweep_dict("p"))
    progress = Progress(spec, slots=2)
    monkeypatch.setattr(type(progress._console), "is_terminal", property(lambda self: True))
    built = []
    monkeypatch.setattr(progress, "_table", lambda trials: built.append(len(trials)) or "t")
    monkeypatch.setattr("sweeps.progress.Live", _FakeLive)
    clock = iter([10.0, 10.1, 10.2, 10.6, 10.7])
    monkeypatch.setattr("sweeps.progress.time.monotonic", lambda: next(clock))
    trials = [_Trial(str(i)) for i in range(3000)]
    for _ in range(5):
        progress.on_step_end(0, trials)
    assert built == [3000, 3000]  # at 10.0 and 10.6 s, not 5 times


class _FakeLive:  # stands in for rich's Live: no terminal in tests
    def __init__(self, renderable: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def update(self, renderable: Any) -> None:
        pass
