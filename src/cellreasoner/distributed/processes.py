"""A matrix backend's chunks on local worker processes (the local engine's ``workers``).

The same chunk-job protocol the Ray engine runs (:meth:`~cellreasoner.backends.Backend.
chunk_job`), on the cores of one machine, without Ray: each worker process opens the input
file itself (:attr:`MatrixSource.reopen`; nothing is shipped but row numbers) and takes every
``workers``-th chunk. Pass one's chunk scores are merged in each worker (the training sample
stays bounded) and once more here; the plan is made here, once, and sent to every worker; pass
two's answers come back chunk by chunk and are yielded in row order, at most two chunks ahead
per worker, so memory stays bounded by the chunk size. The answers are those of the single
process: the same code on the same chunks with the same plan.

A worker that fails sends its exception (re-raised here as it was); one that dies (killed, out
of memory) stops the run with a :class:`~cellreasoner.errors.BackendError` naming it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Iterator

from ..errors import BackendError

log = logging.getLogger(__name__)

#: Cells per chunk (the single process's chunk size).
CHUNK_CELLS = 20_000
#: Answered chunks a worker may hold ahead of the writer.
AHEAD = 2


def default_workers(n_obs: int, chunk_size: int = CHUNK_CELLS) -> int:
    """Worker processes for ``n_obs`` cells when none are asked: every core (at most 8) once
    the data spans at least two chunks per core, else one (in process)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = min(int(cores or 1), 8)
    return cores if cores > 1 and n_obs >= 2 * cores * chunk_size else 1


def can_run(be, source) -> bool:
    """Whether ``be`` answers chunk jobs and ``source`` can be opened again in another
    process."""
    return bool(be.capabilities.chunk_jobs) and source.reopen is not None


def matrix_answers(be, source, workers: int, *, connectivities=None,
                   chunk_size: int = CHUNK_CELLS,
                   progress: Callable[[float], None] | None = None) -> Iterator:
    """Every chunk's answers (:class:`~cellreasoner.backends.base.CellAnswers`) in row
    order, from ``workers`` processes running ``be.chunk_job(source)``.

    A backend that reads the matrix through a transform (:meth:`Backend.read_matrix`: the
    builtin's ATAC profile) answers in this process: workers could not open the transform.
    """
    read = be.read_matrix(source)
    job = be.chunk_job(read)
    if read is not source or workers <= 1:
        yield from _in_process(job, read, connectivities, chunk_size, progress)
        return
    spans = [(lo, min(lo + chunk_size, source.n_obs))
             for lo in range(0, source.n_obs, chunk_size)]
    workers = max(1, min(int(workers), len(spans)))
    ctx = mp.get_context("spawn")  # no inherited HDF5 handles or threads
    pass_one = job.needs_pass_one(connectivities)
    keep = connectivities is not None
    # unbounded: a put never blocks on a worker that died
    inbox = [ctx.Queue() for _ in range(workers)]
    outbox = [ctx.Queue(AHEAD) for _ in range(workers)]
    # the job goes through the queue, not the start arguments: a worker killed while it
    # starts cannot then leave the launch blocked on a full pipe
    procs = [ctx.Process(target=_work, name=f"cellreasoner-worker-{i}", daemon=True,
                         args=(source.reopen, spans[i::workers], pass_one, keep, inbox[i],
                               outbox[i]))
             for i in range(workers)]
    log.info("annotating %d chunks on %d local worker processes", len(spans), workers)
    for p, q in zip(procs, inbox, strict=True):
        p.start()
        q.put(job)
    try:
        planner = job.planner(connectivities)
        if pass_one:
            for i in range(workers):
                parts, training = _receive(procs[i], outbox[i], "scores")
                planner.merge(parts, training)
        plan = planner.plan(source)
        for q in inbox:
            q.put(plan)
        for k, (lo, hi) in enumerate(spans):
            i = k % workers
            start, answers = _receive(procs[i], outbox[i], "answers")
            if start != lo or len(answers) != hi - lo:
                raise BackendError(f"worker {i} answered cells from {start} "
                                   f"({len(answers)}), expected {lo}-{hi}.")
            if progress is not None:
                progress(len(answers))
            yield answers
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for q in (*inbox, *outbox):
            q.close()
            q.cancel_join_thread()


def _in_process(job, source, connectivities, chunk_size: int, progress) -> Iterator:
    """The chunk-job protocol in this process (pass one, plan, pass two)."""
    def chunks() -> Iterator[tuple[int, object]]:
        start = 0
        for chunk in source.iter_chunks(chunk_size):
            yield start, chunk
            start += chunk.shape[0]

    planner = job.planner(connectivities)
    if job.needs_pass_one(connectivities):
        for start, chunk in chunks():
            planner.add(job.score(chunk, start, connectivities is not None))
    plan = planner.plan(source)
    for start, chunk in chunks():
        answers = job.answer(chunk, start, plan)
        if progress is not None:
            progress(len(answers))
        yield answers


def _receive(proc, box, kind: str):
    """The next message of ``kind`` from ``proc``; its exception re-raised; a clear error if
    it died."""
    while True:
        try:
            tag, value = box.get(timeout=1.0)
        except queue.Empty:
            if not proc.is_alive():
                raise BackendError(
                    f"{proc.name} exited (code {proc.exitcode}) before sending its {kind}: "
                    "killed, or out of memory? Run again with fewer workers (workers=1 / "
                    "--workers 1 annotates in this process).") from None
            continue
        if tag == "error":
            raise value
        if tag != kind:
            raise BackendError(f"{proc.name} sent {tag}, expected {kind}.")
        return value


def _work(reopen, spans, pass_one: bool, keep: bool, inbox, outbox) -> None:
    """One worker process: pass one over its chunks, then (given the plan) pass two."""
    try:
        job = inbox.get()
        source = reopen()
        if pass_one:
            planner = job.planner(None)
            for lo, hi in spans:
                planner.add(job.score(source.read_rows(lo, hi), lo, keep))
            outbox.put(("scores", planner.export()))
        plan = inbox.get()
        for lo, hi in spans:
            outbox.put(("answers", (lo, job.answer(source.read_rows(lo, hi), lo, plan))))
    except BaseException as exc:  # sent to the parent, which raises it  # noqa: BLE001
        try:
            outbox.put(("error", exc))
        except Exception:  # an exception that cannot be pickled: its text  # noqa: BLE001
            outbox.put(("error", BackendError(f"{type(exc).__name__}: {exc}")))


__all__ = ["CHUNK_CELLS", "can_run", "default_workers", "matrix_answers"]
