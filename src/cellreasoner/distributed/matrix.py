"""A matrix backend (the built-in reasoner) on Ray: chunks of cells become Ray tasks.

When the input is a file and every node of the cluster is this machine
(:attr:`MatrixSource.reopen`, :meth:`RayCluster.one_machine`), only row numbers travel and each
worker reads its own chunks (values checked as they stream, as in one process); otherwise the
driver reads the input once per pass and puts each chunk in Ray's object store. A worker runs
the backend's :meth:`~cellreasoner.backends.Backend.chunk_job` on it, the very code a single
process runs on that chunk. Pass one (scores and the training sample, only when the backend
needs it) runs on the workers and merges into the plan on the driver as each chunk finishes;
the plan (the refinement's classifiers) is made once and shared with every task. Pass two's
answers stream back to the driver, the one writer, which records each finished block in the run
manifest; a rerun reads those back instead of asking for them. At most ``workers + 1`` chunks
are in flight (the driver keeps none of them), so memory stays bounded by the chunk size. A
task whose worker dies is retried by Ray (``max_retries``); its answers arrive once, so they
are recorded once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from ..backends.base import CellAnswers, PackedAnswers
from ..errors import BackendError
from ..matrix import row_spans
from .cluster import RayCluster
from .manifest import RunManifest

log = logging.getLogger(__name__)

#: Cells per Ray task (the single process's chunk size).
DEFAULT_BLOCK_CELLS = 20_000
#: Retries of a task whose worker died.
MAX_RETRIES = 3

_FIELDS = ("label", "confidence", "ontology_id", "ontology_label", "reasoning",
           "evidence_fraction", "evidence_flag", "cited_present", "cited_absent")


def answers_frame(answers: CellAnswers) -> pd.DataFrame:
    """A block's answers as a table (the manifest's block file)."""
    return pd.DataFrame({f: np.asarray(getattr(answers, f)) for f in _FIELDS})


def frame_answers(frame: pd.DataFrame) -> CellAnswers:
    """:func:`answers_frame` read back."""
    cols = {f: frame[f].to_numpy(dtype=object if frame[f].dtype == object else None)
            for f in _FIELDS}
    return CellAnswers(**cols)


def block_id(start: int, stop: int) -> str:
    return f"cells {start}-{stop}"


class _Rows:
    """Rows ``lo ... hi - 1`` of a file the worker opens itself (what a task gets instead of
    the chunk when the source can be reopened: only row numbers travel)."""

    def __init__(self, reopen, lo: int, hi: int) -> None:
        self.reopen, self.lo, self.hi = reopen, lo, hi
        self.shape = (hi - lo,)

    def read(self):
        key = repr(self.reopen)
        if key not in _SOURCES:  # one open file per worker process
            _SOURCES.clear()
            _SOURCES[key] = self.reopen()
        return _SOURCES[key].read_rows(self.lo, self.hi)


#: per worker process: the source its last tasks read
_SOURCES: dict[str, object] = {}


def _chunks(source, spans: list[tuple[int, int]],
            direct: bool = False) -> Iterator[tuple[int, object]]:
    """``(start, chunk)`` for each row span, in row order: the chunk itself, read here, or
    (``direct``, a source that reopens) the :class:`_Rows` a worker reads."""
    if direct:
        for lo, hi in spans:
            yield lo, _Rows(source.reopen, lo, hi)
        return
    yield from source.iter_spans(spans)


def _workers_read(source, cluster: RayCluster) -> bool:
    """Whether the workers read their chunks of ``source`` themselves: a file they can open
    (every node is this machine); across machines the driver ships the chunks."""
    return source.reopen is not None and cluster.one_machine()


def _read(chunk):
    return chunk.read() if isinstance(chunk, _Rows) else chunk


def _windowed(ray, submit: Callable, items, limit: int, done: Callable) -> None:
    """``submit(start, chunk)`` for each ``(start, chunk)`` with at most ``limit`` in flight;
    ``done((start, cells), value)`` as each finishes (in completion order)."""
    pending: dict = {}

    def collect() -> None:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        done(pending.pop(ref), ray.get(ref))

    for start, chunk in items:
        while len(pending) >= limit:
            collect()
        # only (start, cells) stays here: the chunk itself lives in the object store
        pending[submit(start, chunk)] = (start, chunk.shape[0])
    while pending:
        collect()


def matrix_answers(be, source, cluster: RayCluster, *, connectivities=None,
                   manifest: RunManifest | None = None, block_cells: int = DEFAULT_BLOCK_CELLS,
                   progress: Callable[[float], None] | None = None,
                   ) -> list[CellAnswers | PackedAnswers]:
    """Every cell's answers from ``be`` (a matrix backend), chunks answered on Ray workers.

    Returns the blocks in row order: those answered now packed as the workers send them
    (:meth:`CellAnswers.pack`), those read back from the manifest as they were recorded.
    """
    ray = cluster.ray
    advance = progress or (lambda k: None)
    read = be.read_matrix(source)
    direct = read is source and _workers_read(source, cluster)
    source = read
    job = be.chunk_job(source)
    spans = row_spans(source.n_obs, block_cells)
    todo = []
    out: dict[int, CellAnswers | PackedAnswers] = {}
    for s in spans:  # finished blocks are read back, the others are asked
        if manifest is not None and manifest.finished(block_id(*s)):
            out[s[0]] = frame_answers(manifest.load(block_id(*s)))
            advance(s[1] - s[0])
        else:
            todo.append(s)
    if manifest is not None and manifest.skipped:
        log.info("resuming: %d of %d block(s) finished earlier (manifest %s)",
                 manifest.skipped, len(spans), manifest.folder)
    if todo:
        _answer_todo(ray, job, be, source, connectivities, todo, cluster, block_cells,
                     manifest, advance, out, direct)
    n = sum(len(b) for b in out.values())
    if n != source.n_obs:
        raise BackendError(f"Backend '{be.name}' returned {n} answers for {source.n_obs} cells.")
    return [out[s] for s in sorted(out)]


def _answer_todo(ray, job, be, source, connectivities, todo: list[tuple[int, int]],
                 cluster: RayCluster,
                 block_cells: int, manifest: RunManifest | None, advance, out: dict,
                 direct: bool = False) -> None:
    limit = cluster.workers + 1  # one chunk waiting per cluster: workers never idle
    job_ref = _JobRef(ray.put(job))
    planner = job.planner(connectivities)
    one = job.pass_one_spans(source.n_obs, connectivities, block_cells)
    if one:
        score = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_score_task)
        keep = connectivities is not None
        # each chunk's scores (and training sample) merge into the plan as they arrive; a
        # task sent later copies only rows that the sample merged so far could still take
        _windowed(ray, lambda start, chunk: score.remote(job_ref, chunk, start, keep,
                                                         planner.bounds()),
                  _chunks(source, one, direct), limit,
                  lambda item, value: planner.add(value))
    # the refinement's classifiers trained side by side, as Ray tasks
    plan = planner.plan(source, map_calls=lambda calls: _ray_map(ray, calls))
    planner = None  # the training rows are not needed for pass two
    plan_ref = ray.put(plan)
    answer = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_answer_task)

    def done(item, answers: PackedAnswers) -> None:
        start, cells = item
        if len(answers) != cells:
            raise BackendError(f"Backend '{be.name}' returned {len(answers)} answers for the "
                               f"{cells} cells from {start}.")
        if manifest is not None:
            manifest.record(block_id(start, start + cells), answers_frame(answers.unpack()))
        out[start] = answers
        advance(len(answers))

    # only the blocks still to do are read (a resumed run's finished ones are not)
    _windowed(ray, lambda start, chunk: answer.remote(job_ref, chunk, start, plan_ref),
              _chunks(source, todo, direct), limit, done)


def group_sums(source, codes: np.ndarray, k: int, cluster: RayCluster,
               block_cells: int = DEFAULT_BLOCK_CELLS) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of expression and of expressing cells (``k`` groups x genes) over every
    chunk of ``source``, each chunk's sums a Ray task (cluster mode's marker statistics)."""
    ray = cluster.ray
    n_genes = len(source.var_names)
    total = [np.zeros((k, n_genes)), np.zeros((k, n_genes))]
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_group_task)
    direct = _workers_read(source, cluster)

    def add(item, value) -> None:
        total[0] += value[0]
        total[1] += value[1]

    _windowed(ray, lambda start, chunk: task.remote(
                  chunk, codes[start:start + chunk.shape[0]], k),
              _chunks(source, row_spans(source.n_obs, block_cells), direct),
              cluster.workers + 1, add)
    return total[0], total[1]


def _ray_map(ray, calls: list) -> list:
    """``fn(*args)`` of each call as a Ray task; results in order."""
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_call)
    return ray.get([task.remote(fn, args) for fn, args in calls])


def _call(fn, args):
    return fn(*args)


def _group_task(chunk, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from ..annotation.clusters import chunk_group_sums

    return chunk_group_sums(_read(chunk), codes, k)


class _JobRef:
    """The job as a task argument: its object reference in a list, which Ray passes as the
    reference, not the value; a worker that ran the job before (same reference) uses its
    own copy instead of fetching and unpickling it again for every chunk."""

    def __init__(self, ref) -> None:
        self.refs = [ref]

    def get(self):
        import ray  # in the worker, which Ray started

        key = self.refs[0].hex()
        if key not in _JOBS:  # one job per worker process: its last
            _JOBS.clear()
            _JOBS[key] = ray.get(self.refs[0])
        return _JOBS[key]


#: per worker process: the job its last tasks ran (its answerer's tables are built once)
_JOBS: dict[str, object] = {}


def _score_task(job: _JobRef, chunk, start: int, keep_scores: bool,
                bounds: dict | None = None):
    return job.get().score(_read(chunk), start, keep_scores, bounds)


def _answer_task(job: _JobRef, chunk, start: int, plan) -> PackedAnswers:
    return job.get().answer(_read(chunk), start, plan).pack()


__all__ = ["DEFAULT_BLOCK_CELLS", "answers_frame", "frame_answers", "group_sums",
           "matrix_answers"]
