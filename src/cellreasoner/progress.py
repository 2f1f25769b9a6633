"""Progress bars (rich) shared by the CLI commands, and the streaming ticks of the model
backends (:class:`StreamTicks`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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


#: Share of a piece of work the bar may show while its answer streams; the rest comes at the end.
STREAM_SHARE = 0.9


@dataclass
class StreamTicks:
    """The progress of one piece of work (a prompt, or a batch of prompts) while its answer
    streams, so a long (reasoning) answer moves the bar before it is done.

    :meth:`tick` moves the bar by parts of ``total`` as tokens arrive, never past
    :data:`STREAM_SHARE` of it; :meth:`finish` shows the rest, so every piece adds exactly
    ``total``. The gguf, openai (``stream=True``) and transformers backends all use it.

    Parameters
    ----------
    progress
        The ``progress(n)`` callback of ``Backend.generate`` (``None``: nothing is shown).
    total
        What the piece adds to the bar when done (1 per prompt; a batch: its prompts).
    """

    progress: Callable[[float], None] | None
    total: float = 1.0
    shown: float = 0.0

    def tick(self, share: float) -> None:
        """Show ``share`` more of the piece (capped at :data:`STREAM_SHARE` of ``total``)."""
        share = min(share, STREAM_SHARE * self.total - self.shown)
        if share > 0 and self.progress is not None:
            self.shown += share
            self.progress(share)

    def finish(self) -> None:
        """Show what is left of ``total`` (the piece is done)."""
        if self.progress is not None:
            self.progress(self.total - self.shown)
