"""Benchmark: cell-sentence preparation at scale (compact form and upstream JSON export).

Generates synthetic log-normalised float32 CSR data (18k genes, ~1,500 non-zeros per cell) as
``.h5ad`` files written chunk by chunk, then measures, each in a fresh process, cells/s and peak
RSS for: merely reading the CSR arrays, building the compact form (Arrow IPC ``.arrow``; and as
Parquet, smaller but slower to encode), and the upstream JSON export.

    python bench/prepare.py --sizes 10000 100000 1000000 --workdir /tmp/cr-bench

Needs the ranked gene list (``--gene-list``, default ``../shared/data/ranked_hvg.list``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_GENES = 18_000
NNZ_PER_CELL = 1_500
CHUNK = 8192
HERE = Path(__file__).resolve().parent
DEFAULT_GENE_LIST = HERE.parent.parent / "shared" / "data" / "ranked_hvg.list"


def make_h5ad(path: Path, n_cells: int, gene_list: Path, seed: int = 0) -> None:
    """Write a synthetic CSR .h5ad without ever holding the whole matrix."""
    import anndata as ad
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    ranked = [g.strip() for g in gene_list.read_text().splitlines() if g.strip()]
    genes = np.array(ranked + [f"SYNGENE{i}" for i in range(N_GENES - len(ranked))], dtype=object)
    rng.shuffle(genes)
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=genes.astype(str))
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, N_GENES])
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32",
                                chunks=(1 << 20,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32",
                                   chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        total = 0
        for start in range(0, n_cells, CHUNK):
            n = min(CHUNK, n_cells - start)
            cols = np.sort(rng.integers(0, N_GENES, size=(n, NNZ_PER_CELL), dtype=np.int32), 1)
            keep = np.ones_like(cols, dtype=bool)
            keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
            counts = keep.sum(1)
            cols = cols[keep]
            vals = np.log1p(rng.geometric(0.5, size=cols.size).astype(np.float32))
            m = cols.size
            data.resize((total + m,))
            indices.resize((total + m,))
            data[total:] = vals
            indices[total:] = cols
            indptr.append(total + np.cumsum(counts))
            total += m
        g.create_dataset("indptr", data=np.concatenate(indptr))


def _child(task: str, path: str, out: str, gene_list: str) -> None:
    """Run one measurement in this (fresh) process and print a JSON line."""
    import resource

    from cellreasoner.matrix import from_h5ad
    from cellreasoner.sentences.prepare import prepare

    t0 = time.perf_counter()  # after imports: the figures measure the work, not startup
    if task == "read":
        n = 0
        nnz = 0
        for chunk in from_h5ad(path).iter_chunks(CHUNK):
            n += chunk.shape[0]
            nnz += chunk.nnz
    else:
        _, summary = prepare(path, out, gene_list=gene_list)
        n = summary.n_cells
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(json.dumps({"cells": n, "seconds": seconds, "rss_mib": rss}))


def measure(task: str, path: Path, out: Path, gene_list: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", task, str(path), str(out), str(gene_list)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{task} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:6])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cellreasoner-bench"))
    p.add_argument("--gene-list", type=Path, default=DEFAULT_GENE_LIST)
    p.add_argument("--keep", action="store_true", help="keep generated files")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        src = args.workdir / f"synthetic_{n}.h5ad"
        if not src.exists():
            t0 = time.perf_counter()
            make_h5ad(src, n, args.gene_list)
            print(f"generated {n:,} cells in {time.perf_counter() - t0:.1f} s "
                  f"({src.stat().st_size / 2**30:.2f} GiB)", file=sys.stderr)
        for task, out in (("read", None), ("compact", args.workdir / f"s_{n}.arrow"),
                          ("parquet", args.workdir / f"s_{n}.parquet"),
                          ("json", args.workdir / f"s_{n}.json")):
            r = measure(task, src, out or args.workdir / "none", args.gene_list)
            size = out.stat().st_size / 2**30 if out and out.exists() else float("nan")
            rows.append((n, task, r["seconds"], r["cells"] / r["seconds"], r["rss_mib"], size))
            if out and out.exists() and not args.keep:
                out.unlink()
        if not args.keep:
            src.unlink()
    print(f"\n{'cells':>10} {'task':>8} {'seconds':>9} {'cells/s':>10} {'peak RSS MiB':>13}"
          f" {'output GiB':>11}")
    for n, task, sec, rate, rss, size in rows:
        print(f"{n:>10,} {task:>8} {sec:>9.1f} {rate:>10,.0f} {rss:>13,.0f} {size:>11.2f}")
    print(f"\nmachine: {os.cpu_count()} cores; chunk {CHUNK} cells")


if __name__ == "__main__":
    main()
