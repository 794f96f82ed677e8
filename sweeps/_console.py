"""The ``sweeps`` CLI's output: results on stdout, ``error: ...`` lines on stderr.

Shared by ``sweeps.cli`` and ``sweeps.jobs_cli`` so that neither imports the other for it.
"""

from __future__ import annotations

import typer
from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (one line, no markup) and return the exit to raise (code 2).

    A line break in it (a spec's key quoted back, say) is shown escaped: a spec's text must
    not be able to print lines of its own."""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(2)
