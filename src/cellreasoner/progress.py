"""Progress bars (rich) shared by the CLI commands."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "cells",
                 enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with rate and ETA; yields ``advance(n)``.

    Disabled (a no-op) when stderr is not a terminal unless ``enabled=True``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)
            t = progress.tasks[task]
            speed = t.finished_speed or t.speed
            if speed:
                progress.update(task, rate=f"{speed:,.0f} {unit}/s")

        yield advance
