"""A local worker process of :mod:`cellreasoner.distributed.processes`.

Started as ``python -m cellreasoner.distributed._worker`` by the annotating process, which
writes pickled messages to this process's stdin and reads its answers from stdout (its own
child, over its own pipes; nothing here reads a file others could write). Anything printed
goes to stderr, so it can never corrupt a message.

Messages in: ``("job", job, reopen, spans, pass_one, keep)`` once (``pass_one``: the spans
this worker scores in pass one, ``None`` when there is no pass one); after pass one
``("rows", cells)`` (the merged training sample's cells: this worker sends those rows it holds);
``("call", fn, args)`` any number of times (work the parent spreads over its workers, e.g.
training the refinement's classifiers); ``("plan", plan)`` once, then pass two runs. Out:
``("scores", ...)`` after pass one (its sample without rows), ``("rows", (cells, rows))``,
``("result", value)`` per call, ``("answers", (start, packed answers))`` per chunk
(:meth:`~cellreasoner.backends.base.CellAnswers.pack`), or
``("error", exception)``.
"""

from __future__ import annotations

import os
import pickle
import sys

from .._system import release_memory


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into the message stream
    inbox = sys.stdin.buffer

    def send(message: tuple) -> None:
        pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()

    try:
        _, job, reopen, spans, pass_one, keep = pickle.load(inbox)
        source = reopen()
        if pass_one is not None:  # this worker's share of pass one's spans (maybe none)
            _pass_one(job, source, pass_one, keep, inbox, send)
            release_memory()  # the sample's rows are gone before the training calls come
        while True:
            message = pickle.load(inbox)
            if message[0] == "call":
                send(("result", message[1](*message[2])))
                continue
            plan = message[1]
            break
        release_memory()  # pass one's sample and the training are gone: the chunks remain
        for lo, hi in spans:
            # packed: a third of the bytes to send, a sixth of what the parent holds
            send(("answers", (lo, job.answer(source.read_rows(lo, hi), lo, plan).pack())))
    except EOFError:  # the parent closed the pipe: the run is over (or was stopped)
        return
    except BaseException as exc:  # sent to the parent, which raises it  # noqa: BLE001
        try:
            send(("error", exc))
        except Exception:  # an exception that cannot be pickled: its text  # noqa: BLE001
            from ..errors import BackendError

            send(("error", BackendError(f"{type(exc).__name__}: {exc}")))


def _pass_one(job, source, spans, keep: bool, inbox, send) -> None:
    """Score this worker's ``spans``, send the sample without rows, then the rows of the
    parent's merged sample. A function of its own: its last chunk (a chunk's worth of memory)
    and the planner are gone when it returns, not held through pass two."""
    planner = job.planner(None)
    for lo, chunk in source.iter_spans(spans):
        planner.add(job.score(chunk, lo, keep, planner.bounds()))
    send(("scores", planner.export()))
    # the parent merged every worker's sample: it asks for the rows of its cells
    send(("rows", planner.rows_of(_expect(inbox, "rows")[1])))


def _expect(inbox, kind: str) -> tuple:
    message = pickle.load(inbox)
    if message[0] != kind:
        raise RuntimeError(f"worker expected a {kind} message, got {message[0]}")
    return message


if __name__ == "__main__":
    main()
