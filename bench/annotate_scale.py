"""Benchmark: ``cellreasoner annotate`` at atlas scale, and side by side with CellTypist.

Run from the project root (``pip install celltypist`` for the comparison; ../shared gives the
real gene list, else synthetic names are used)::

    python bench/annotate_scale.py [--cells 100000 300000 1000000] [--workdir DIR]
                                   [--skip-celltypist]

Data: synthetic *realistic* cells (``tests/synthetic.py``: 18,000 genes, ~1,500 non-zeros per
cell, log1p CP10k CSR, ten textbook immune programmes), written to ``.h5ad`` chunk by chunk.
Every figure is one whole process (wall seconds from its start; peak RSS summed over it and the
processes it starts, sampled every 0.1 s, and the peak of their summed PSS, which counts shared
pages once: see :func:`timed`):

- bare read of X: stream every CSR chunk of X from the file (``cellreasoner.matrix.from_h5ad``);
- write of X: copy the file (what writing the annotated ``.h5ad`` costs for the matrix);
- annotate to ``.h5ad`` / to ``.parquet`` (obs-only): ``cellreasoner annotate IN -o OUT
  --no-progress``, the built-in reasoner with its defaults (on this 2-core machine: two worker
  processes once the file holds 80,000 cells);
- the pipeline's own work: cells / (annotate to .h5ad - read - write) seconds.

Every run starts alike (``_common.settle``): earlier writes flushed, the input read through
once, untimed, so that it is in the page cache ("input from: cache"; "disk" for a file that
would not fit beside a run). Without it each figure depended on the runs before it (an
11 GiB output written just before evicts the input).

CellTypist (Dominguez Conde et al. 2022) is the peer users pick for speed: a model is trained on
pbmc68k_reduced (``celltypist.train``, all 765 genes, SGD), then ``celltypist.annotate`` runs on the
same file in its own process (predictions written to CSV) — on pbmc68k_reduced tiled to 100,000
cells and on the 100,000-cell synthetic set.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import settle, table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

_table = functools.partial(table, align="right", sep="-|-")  # the shared bench table




def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS, peak PSS in MiB) of one process and every process it starts
    (summed over them: worker processes count). RSS is sampled every 0.1 s, PSS every 0.2 s.

    Summed RSS counts every page shared between processes once per process: shared libraries,
    and all of a forked child's pages (the ``.h5ad`` writer is a fork of the annotating
    process). PSS (the kernel's proportional set size) counts a page shared by k processes
    1/k times in each, so its sum is what the run takes from the machine."""
    import time

    import psutil

    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        top, peak, peak_pss, k = psutil.Process(proc.pid), 0.0, 0.0, 0
        while proc.poll() is None:
            total = pss = 0
            # a process may exit between being listed and being read: it then counts 0
            with contextlib.suppress(psutil.Error):
                for p in [top, *top.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        if k % 2 == 0:
                            info = p.memory_full_info()
                            total += info.rss
                            pss += info.pss
                        else:
                            total += p.memory_info().rss
            peak = max(peak, total / 2**20)
            peak_pss = max(peak_pss, pss / 2**20)
            k += 1
            time.sleep(0.1)
        secs = time.perf_counter() - t0
        log.seek(0)
        err = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return secs, peak, peak_pss


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def read_x(path: Path) -> list[str]:
    return py(f"""
        from cellreasoner.matrix import from_h5ad
        n = sum(c.nnz for c in from_h5ad({str(path)!r}).iter_chunks())
        assert n > 0
    """)


def copy_file(src: Path, dst: Path) -> list[str]:
    return py(f"import shutil; shutil.copyfile({str(src)!r}, {str(dst)!r})")


def annotate(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "cellreasoner.cli", "annotate", str(src), "-o", str(dst),
            "--no-progress"]


def celltypist_annotate(src: Path, model: Path, dst: Path) -> list[str]:
    return py(f"""
        import celltypist
        pred = celltypist.annotate({str(src)!r}, model={str(model)!r})
        pred.predicted_labels.to_csv({str(dst)!r})
    """)


def synthetic_file(workdir: Path, n: int) -> Path:
    import synthetic

    path = workdir / f"synthetic_{n}.h5ad"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        tmp = path.with_suffix(".tmp.h5ad")
        synthetic.write_h5ad(tmp, n)
        tmp.rename(path)
    return path


def pbmc68k_tiled(workdir: Path, n: int) -> Path:
    import anndata as ad
    import scanpy as sc

    path = workdir / f"pbmc68k_tiled_{n}.h5ad"
    if not path.exists():
        base = sc.datasets.pbmc68k_reduced()
        raw = base.raw.to_adata()
        reps = -(-n // raw.n_obs)
        tiled = ad.concat([raw] * reps, index_unique="-")[:n].copy()
        tiled.write_h5ad(path)
    return path


def celltypist_model(workdir: Path) -> Path:
    path = workdir / "celltypist_pbmc68k.pkl"
    if not path.exists():
        import celltypist
        import scanpy as sc

        base = sc.datasets.pbmc68k_reduced()
        raw = base.raw.to_adata()
        raw.obs["bulk_labels"] = base.obs["bulk_labels"].astype(str).to_numpy()
        # SGD: celltypist 1.7.1's LogisticRegression path passes multi_class, which
        # scikit-learn >= 1.8 no longer takes; prediction is the same linear model either way.
        # check_expression off: these are 765 of the genes, whose values do not sum to 1e4
        model = celltypist.train(raw, labels="bulk_labels", feature_selection=False, n_jobs=2,
                                 use_SGD=True, check_expression=False)
        model.write(str(path))
    return path


def scale_rows(workdir: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        src = synthetic_file(workdir, n)
        settle(src)
        read_s, read_m, _ = timed(read_x(src))
        settle(src)
        write_s, _, _ = timed(copy_file(src, workdir / "copy.h5ad"))
        (workdir / "copy.h5ad").unlink()
        settle(src)
        h5_s, h5_m, h5_p = timed(annotate(src, workdir / "out.h5ad"))
        (workdir / "out.h5ad").unlink()
        start = settle(src)
        pq_s, pq_m, pq_p = timed(annotate(src, workdir / "out.parquet"))
        own = h5_s - read_s - write_s
        rows.append({
            "cells": f"{n:,}", "read X s": f"{read_s:.1f}", "write X s": f"{write_s:.1f}",
            "-> .h5ad s": f"{h5_s:.1f}", ".h5ad cells/s": f"{n / h5_s:,.0f}",
            ".h5ad peak MiB": f"{h5_m:,.0f}", ".h5ad PSS MiB": f"{h5_p:,.0f}",
            "-> .parquet s": f"{pq_s:.1f}", ".parquet cells/s": f"{n / pq_s:,.0f}",
            ".parquet peak MiB": f"{pq_m:,.0f}", ".parquet PSS MiB": f"{pq_p:,.0f}",
            "own cells/s": f"{n / own:,.0f}" if own > 0 else "inf",
            "read peak MiB": f"{read_m:,.0f}", "input from": "cache" if start else "disk",
        })
    return rows


def celltypist_rows(workdir: Path, n: int) -> list[dict]:
    model = celltypist_model(workdir)
    rows = []
    for name, src in (("pbmc68k tiled", pbmc68k_tiled(workdir, n)),
                      ("synthetic 18k genes", synthetic_file(workdir, n))):
        settle(src)
        cr_s, cr_m, _ = timed(annotate(src, workdir / "cr.parquet"))
        settle(src)
        ct_s, ct_m, _ = timed(celltypist_annotate(src, model, workdir / "ct.csv"))
        rows.append({"data": f"{name} ({n:,})", "cellreasoner s": f"{cr_s:.1f}",
                     "cellreasoner peak MiB": f"{cr_m:,.0f}", "CellTypist s": f"{ct_s:.1f}",
                     "CellTypist peak MiB": f"{ct_m:,.0f}",
                     "speed-up": f"{ct_s / cr_s:.2f}x",
                     "memory ratio": f"{cr_m / ct_m:.2f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--workdir", type=Path, help="where the data files go (kept for reruns)")
    ap.add_argument("--skip-celltypist", action="store_true")
    args = ap.parse_args()
    use_shared_gene_list()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print("## annotate at scale (builtin, whole process; this machine)\n")
        print(_table(scale_rows(workdir, args.cells),
                     ["cells", "read X s", "write X s", "-> .h5ad s", ".h5ad cells/s",
                      ".h5ad peak MiB", ".h5ad PSS MiB", "-> .parquet s", ".parquet cells/s",
                      ".parquet peak MiB", ".parquet PSS MiB", "own cells/s",
                      "read peak MiB", "input from"]))
        if not args.skip_celltypist:
            print("\n## side by side with CellTypist (whole process, obs-only outputs)\n")
            print(_table(celltypist_rows(workdir, min(args.cells)),
                         ["data", "cellreasoner s", "cellreasoner peak MiB", "CellTypist s",
                          "CellTypist peak MiB", "speed-up", "memory ratio"]))


if __name__ == "__main__":
    main()
