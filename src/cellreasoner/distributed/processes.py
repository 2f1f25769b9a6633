"""A matrix backend's chunks on local worker processes (the local engine's ``workers``).

The same chunk-job protocol the Ray engine runs (:meth:`~cellreasoner.backends.Backend.
chunk_job`), on the cores of one machine, without Ray: each worker process
(``python -m cellreasoner.distributed._worker``, so the caller's script is never imported
again and needs no ``if __name__ == "__main__"`` guard) opens the input file itself
(:attr:`MatrixSource.reopen`; only row numbers travel) and takes every ``workers``-th chunk.
Pass one's chunk scores are merged in each worker (the training sample stays bounded) and once
more here, first without their rows: only the rows of the merged sample are sent here. The
plan is made here, its classifiers trained on the workers side by side, and sent
to every worker; pass two's answers come back chunk by chunk and are yielded in row order, at
most :data:`AHEAD` chunks ahead per worker, so memory stays bounded by the chunk size. The
answers are those of the single process: the same code on the same chunks with the same plan.

Messages between this process and its own workers are pickled over pipes (never read from a
file). A worker that fails sends its exception (re-raised here as it was); one that dies
(killed, out of memory) stops the run with a :class:`~cellreasoner.errors.BackendError` naming
it.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator

from .._system import release_memory
from ..errors import BackendError
from ..matrix import row_spans

log = logging.getLogger(__name__)

#: Cells per worker task (half the single process's chunk: each worker holds less at a time,
#: and the answers do not depend on the chunking).
CHUNK_CELLS = 10_000
#: Cells per core from which the default uses worker processes (below, starting them costs
#: more than they save).
MIN_CELLS_PER_CORE = 40_000
#: Answered chunks a worker may hold ahead of the writer.
AHEAD = 2
#: Thread-pool sizes of the numeric libraries, set to 1 in every worker.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_workers(n_obs: int) -> int:
    """Worker processes for ``n_obs`` cells when none are asked: every core (at most 8) once
    the data holds :data:`MIN_CELLS_PER_CORE` cells per core, else one (in process)."""
    from .._system import available_cores

    cores = min(available_cores(), 8)
    return cores if cores > 1 and n_obs >= MIN_CELLS_PER_CORE * cores else 1


def can_run(be, source) -> bool:
    """Whether ``be`` answers chunk jobs and ``source`` can be opened again in another
    process."""
    return bool(be.capabilities.chunk_jobs) and source.reopen is not None


def matrix_answers(be, source, workers: int, *, connectivities=None,
                   chunk_size: int = CHUNK_CELLS,
                   progress: Callable[[float], None] | None = None) -> Iterator:
    """Every chunk's answers in row order, from ``workers`` processes running
    ``be.chunk_job(source)``: as the workers send them, packed
    (:class:`~cellreasoner.backends.base.PackedAnswers`; in this process without workers,
    :class:`~cellreasoner.backends.base.CellAnswers`).

    A backend that reads the matrix through a transform (:meth:`Backend.read_matrix`: the
    builtin's ATAC profile) answers in this process: workers could not open the transform.
    """
    spans = row_spans(source.n_obs, chunk_size)
    workers = max(1, min(int(workers), len(spans)))
    if workers <= 1:
        yield from be.annotate_matrix(source, connectivities=connectivities, progress=progress)
        return
    read = be.read_matrix(source)
    job = be.chunk_job(read)
    if read is not source:  # the job's own single-process run on the transformed matrix
        yield from job.run(read, connectivities, progress)
        return
    one = job.pass_one_spans(source.n_obs, connectivities, chunk_size)
    keep = connectivities is not None
    log.info("annotating %d chunks on %d local worker processes", len(spans), workers)
    pool = [_Worker(i) for i in range(workers)]
    finished = False
    try:
        for i, w in enumerate(pool):
            w.send(("job", job, source.reopen, spans[i::workers],
                    one[i::workers] if one else None, keep))
        planner = job.planner(connectivities)
        if one:  # the samples' cells first, then only the merged sample's rows
            for w in pool:
                planner.merge(*w.receive("scores"))
            cells = planner.sample_cells()
            for w in pool:
                w.send(("rows", cells))
            for w in pool:
                planner.attach(w.receive("rows"))
        plan = planner.plan(source, map_calls=lambda calls: _map(pool, calls))
        del planner  # the training rows are not needed for pass two
        release_memory()
        for w in pool:
            w.send(("plan", plan))
        for k, (lo, hi) in enumerate(spans):
            w = pool[k % workers]
            start, answers = w.receive("answers")
            if start != lo or len(answers) != hi - lo:
                raise BackendError(f"{w.name} answered cells from {start} ({len(answers)}), "
                                   f"expected {lo}-{hi}.")
            if progress is not None:
                progress(len(answers))
            yield answers
        finished = True
    finally:  # stopped early (an error, Ctrl-C): the workers are stopped, not waited for
        for w in pool:
            w.close(wait=finished)


def _map(pool: list[_Worker], calls: Iterable[tuple[Callable, tuple]]) -> list:
    """``fn(*args)`` for each call, each taken by the next idle worker (they are idle between
    the passes); results in order. ``calls`` is drawn one at a time, as workers take them."""
    out: dict[int, object] = {}
    todo = enumerate(calls)
    lock = threading.Lock()
    failed: list[BaseException] = []

    def serve(w: _Worker) -> None:
        while True:
            try:
                with lock:  # the next call is made here (its rows copied) as it is taken
                    item = None if failed else next(todo, None)
                if item is None:
                    return
                k, (fn, args) = item
                w.send(("call", fn, args))
                del item, fn, args
                out[k] = w.receive("result")
            except BaseException as exc:  # raised below, in the caller's thread  # noqa: BLE001
                failed.append(exc)
                return

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return [out[k] for k in sorted(out)]


class _Worker:
    """One worker process and the thread that reads its messages (at most :data:`AHEAD`
    waiting: a worker ahead of the writer blocks on its full pipe)."""

    def __init__(self, index: int) -> None:
        self.name = f"cellreasoner worker {index}"
        # one BLAS thread each: the workers already use the cores (more threads only spin)
        env = {**os.environ, **dict.fromkeys(_THREAD_VARS, "1")}
        self.proc = subprocess.Popen([sys.executable, "-m", "cellreasoner.distributed._worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.box: queue.Queue = queue.Queue(AHEAD)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                message = pickle.load(self.proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self.box.put(("exited", None))
                return
            self.box.put(message)

    def send(self, message: tuple) -> None:
        try:
            pickle.dump(message, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._died("its work")

    def receive(self, kind: str):
        """The next message of ``kind``; the worker's exception re-raised; a clear error if
        it died."""
        tag, value = self.box.get()
        if tag == "error":
            raise value
        if tag == "exited":
            self._died(kind)
        if tag != kind:
            raise BackendError(f"{self.name} sent {tag}, expected {kind}.")
        return value

    def _died(self, what: str) -> None:
        code = self.proc.wait(timeout=30)
        raise BackendError(
            f"{self.name} exited (code {code}) before sending {what}: killed, or out of "
            "memory? Run again with fewer workers (workers=1 / --workers 1 annotates in this "
            "process).") from None

    def close(self, wait: bool = True) -> None:
        """End the worker: let it finish (``wait``) or stop it now."""
        if self.proc.poll() is None:
            if not wait:
                self.proc.kill()
            try:
                self.proc.stdin.close()
            except OSError:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:  # already closed by a dead worker: nothing left to release
                continue


__all__ = ["AHEAD", "CHUNK_CELLS", "can_run", "default_workers", "matrix_answers"]
