"""The local engine's worker processes (``workers=``): the single process's answers, from
several processes reading the file themselves; failures come back as one clear error."""

from __future__ import annotations

import os
import signal
import threading
import time

import anndata
import numpy as np
import pandas as pd
import psutil
import pytest
import synthetic

from cellreasoner import annotate
from cellreasoner.errors import BackendError, InputError


def test_two_workers_give_the_single_process_answers(cells_12k, cells_12k_table):
    """Six chunks over two processes: every column of every cell equals the one-process run
    (the same training sample, classifiers, labels, confidences, traces and evidence)."""
    res = annotate(str(cells_12k), workers=2, chunk_size=2_000, progress=False)
    pd.testing.assert_frame_equal(res.table, cells_12k_table)
    assert cells_12k_table["label"].nunique() >= 6


def test_default_workers_by_size():
    from cellreasoner.distributed.processes import default_workers

    assert default_workers(1_000) == 1  # small data: no processes to start
    cores = min(len(os.sched_getaffinity(0)), 8)
    assert default_workers(10_000_000) == (cores if cores > 1 else 1)


def test_in_memory_data_stays_in_process(cells_12k, cells_12k_table):
    """An AnnData in memory cannot be reopened by a worker: one process, same answers."""
    import anndata as ad

    from cellreasoner.distributed import processes
    from cellreasoner.matrix import from_anndata

    adata = ad.read_h5ad(cells_12k)
    assert from_anndata(adata).reopen is None
    from cellreasoner.backends import get_backend

    assert not processes.can_run(get_backend("builtin"), from_anndata(adata))
    res = annotate(adata, workers=2, chunk_size=2_000, progress=False)
    np.testing.assert_array_equal(res.table["label"].to_numpy(),
                                  cells_12k_table["label"].to_numpy())


def test_bad_value_in_a_worker_is_the_clear_input_error(tmp_path):
    """A NaN read by a worker process reaches the caller as the InputError naming the cell
    (what one process raises), not as a worker traceback."""
    import h5py

    path = synthetic.write_h5ad(tmp_path / "nan.h5ad", 6_000, nnz=100, chunk=6_000, seed=2)
    with h5py.File(path, "r+") as f:
        indptr = f["X/indptr"][()]
        f["X/data"][indptr[4_500] + 1] = np.nan  # a cell in the last worker chunk
    t0 = time.monotonic()
    with pytest.raises(InputError, match="NaN") as err:
        annotate(str(path), workers=2, chunk_size=1_500, progress=False)
    obs_name = anndata.read_h5ad(path, backed="r").obs_names[4_500]
    assert f"cell '{obs_name}' (row 4500)" in str(err.value), err.value
    # the other worker was stopped, not waited for: no worker is left behind
    left = [c for c in psutil.Process().children(recursive=True)
            if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
            and "cellreasoner.distributed._worker" in " ".join(c.cmdline())]
    assert left == [] and time.monotonic() - t0 < 60


def test_killed_worker_stops_the_run_with_a_clear_error(cells_12k):
    """SIGKILL one worker process mid-run: the run stops with a BackendError naming the
    worker and what to do (no hang, no partial output)."""
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "cellreasoner.distributed._worker" in cmd:
                    try:
                        busy = sum(proc.cpu_times()[:2])
                    except psutil.Error:
                        continue
                    if busy > 1.5:  # started and at work on its chunks
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one)
    killer.start()
    with pytest.raises(BackendError, match=r"worker \d exited .*--workers 1"):
        annotate(str(cells_12k), workers=2, chunk_size=500, progress=False)
    killer.join()
    assert killed


def test_a_script_without_a_main_guard_can_use_workers(cells_12k, cells_12k_table, tmp_path):
    """Workers are started as ``python -m cellreasoner.distributed._worker``, not by
    re-importing the caller's script: a plain script without ``if __name__ ==
    "__main__"`` annotates with two workers (multiprocessing's spawn would start it again)."""
    import subprocess
    import sys

    script = tmp_path / "plain.py"
    out = tmp_path / "labels.parquet"
    script.write_text(
        "from cellreasoner import annotate\n"
        f"res = annotate({str(cells_12k)!r}, workers=2, chunk_size=3000, progress=False)\n"
        f"res.table.to_parquet({str(out)!r})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_parquet(out), cells_12k_table)


def test_classifiers_trained_on_workers_equal_one_process(cells_12k):
    """The refinement's classifiers trained side by side (one call per subtype step, on the
    workers) are the classifiers one process trains."""
    from cellreasoner.backends import get_backend
    from cellreasoner.backends.builtin._stream import StreamPlanner, score_chunk
    from cellreasoner.matrix import from_h5ad

    source = from_h5ad(cells_12k)
    job = get_backend("builtin").chunk_job(source)
    r = job.reasoner
    planner = StreamPlanner(r, None)
    for lo in range(0, source.n_obs, 4000):
        planner.add(score_chunk(r, source.read_rows(lo, lo + 4000), job.genes, lo,
                                keep_scores=False))
    ran: list[int] = []

    def here(calls):  # what the workers run, run here
        calls = list(calls)
        ran.append(len(calls))
        return [fn(*args) for fn, args in calls]

    parallel = planner.plan(source, map_calls=here).classifiers
    serial = planner.plan(source).classifiers
    assert ran and ran[0] >= 2 and sorted(parallel) == sorted(serial)
    for p in serial:
        np.testing.assert_array_equal(parallel[p].coef, serial[p].coef)
        np.testing.assert_array_equal(parallel[p].features, serial[p].features)


def test_spaced_pass_one_gives_the_single_process_answers(cells_12k):
    """Data larger than ``refine_sample_from``: pass one scores spaced windows only (the
    training sample, so the answers, may differ from a pass over every cell); two workers,
    with their own chunk size, score the same windows and give the single process's answers."""
    from cellreasoner.backends.builtin import BuiltinBackend

    def run(workers: int, **kw):
        be = BuiltinBackend(refine_sample_from=3_000)
        return annotate(str(cells_12k), backend=be, workers=workers, progress=False, **kw).table

    one = run(1)
    pd.testing.assert_frame_equal(run(2, chunk_size=2_000), one)
    assert one["label"].nunique() >= 6
