"""The local engine's worker processes (``workers=``): the single process's answers, from
several processes reading the file themselves; failures come back as one clear error."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import synthetic

from cellreasoner import annotate
from cellreasoner.errors import BackendError, InputError


@pytest.fixture(scope="module")
def cells_h5ad(tmp_path_factory) -> Path:
    """12,000 synthetic realistic cells (few stored values: fast)."""
    return synthetic.write_h5ad(tmp_path_factory.mktemp("procs") / "cells.h5ad", 12_000,
                                nnz=200, chunk=12_000, seed=5)


@pytest.fixture(scope="module")
def one_process(cells_h5ad) -> pd.DataFrame:
    return annotate(str(cells_h5ad), workers=1, progress=False).table


def test_two_workers_give_the_single_process_answers(cells_h5ad, one_process):
    """Six chunks over two processes: every column of every cell equals the one-process run
    (the same training sample, classifiers, labels, confidences, traces and evidence)."""
    res = annotate(str(cells_h5ad), workers=2, chunk_size=2_000, progress=False)
    pd.testing.assert_frame_equal(res.table, one_process)
    assert one_process["label"].nunique() >= 6


def test_default_workers_by_size():
    from cellreasoner.distributed.processes import default_workers

    assert default_workers(1_000) == 1  # small data: no processes to start
    cores = min(len(os.sched_getaffinity(0)), 8)
    assert default_workers(10_000_000) == (cores if cores > 1 else 1)


def test_in_memory_data_stays_in_process(cells_h5ad, one_process):
    """An AnnData in memory cannot be reopened by a worker: one process, same answers."""
    import anndata as ad

    from cellreasoner.distributed import processes
    from cellreasoner.matrix import from_anndata

    adata = ad.read_h5ad(cells_h5ad)
    assert from_anndata(adata).reopen is None
    from cellreasoner.backends import get_backend

    assert not processes.can_run(get_backend("builtin"), from_anndata(adata))
    res = annotate(adata, workers=2, chunk_size=2_000, progress=False)
    np.testing.assert_array_equal(res.table["label"].to_numpy(),
                                  one_process["label"].to_numpy())


def test_bad_value_in_a_worker_is_the_clear_input_error(tmp_path):
    """A NaN read by a worker process reaches the caller as the InputError naming the cell
    (what one process raises), not as a worker traceback."""
    import h5py

    path = synthetic.write_h5ad(tmp_path / "nan.h5ad", 6_000, nnz=100, chunk=6_000, seed=2)
    with h5py.File(path, "r+") as f:
        indptr = f["X/indptr"][()]
        f["X/data"][indptr[4_500] + 1] = np.nan  # a cell in the last worker chunk
    with pytest.raises(InputError, match="NaN") as err:
        annotate(str(path), workers=2, chunk_size=1_500, progress=False)
    assert "4500" in str(err.value) or "cell" in str(err.value)


def test_killed_worker_stops_the_run_with_a_clear_error(cells_h5ad):
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
                if "spawn_main" in cmd:
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
    with pytest.raises(BackendError, match=r"worker-\d exited .*--workers 1"):
        annotate(str(cells_h5ad), workers=2, chunk_size=500, progress=False)
    killer.join()
    assert killed
