"""Throughput (cells/s) and peak memory of the built-in marker reasoner.

Usage::

    python bench/reasoner_speed.py [--cells 200000] [--genes 18000] [--nnz 1500]
                                   [--sentences 20000] [--memory-cells 0]

Synthetic cells: ``--cells`` log-normalised CSR rows over ``--genes`` genes (the knowledge
base's markers, the ranked gene list, then filler names), ~``--nnz`` non-zeros each: a random
background plus, per cell, half the markers of a random knowledge-base leaf type and its
ancestors (so traces and evidence are as varied as real data, or more). Rows: the reasoner
(streaming :meth:`Reasoner.iter_blocks`) without traces, with traces, with traces and the
evidence check the backend returns, with the self-training refinement (its training is a
fixed cost, reported apart), with a kNN graph; then real pbmc68k_reduced cell sentences
(the backend's prompt path). ``--memory-cells N`` runs, in a child process, the backend's
``annotate_matrix`` over N synthetic cells generated block by block (never all in memory)
and reports its peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellreasoner.backends.builtin._stream import EvidenceSpec
from cellreasoner.backends.builtin.reasoner import Reasoner
from cellreasoner.matrix import MatrixSource, from_matrix


def synthetic_genes(reasoner: Reasoner, n_genes: int, gene_list: list[str]) -> np.ndarray:
    names = list(dict.fromkeys([*reasoner.genes, *gene_list]))[:n_genes]
    names += [f"SYN{i}" for i in range(n_genes - len(names))]
    return np.array(names, dtype=object)


def _programmes(reasoner: Reasoner, genes: np.ndarray) -> sp.csr_matrix:
    """Types x genes: the positive markers of each type and its ancestors."""
    col = {g: j for j, g in enumerate(genes)}
    rows, cols = [], []
    for t in range(len(reasoner.names)):
        u = t
        while u >= 0:
            for m in np.flatnonzero(reasoner.P[u] > 0):
                if (j := col.get(reasoner.genes[m])) is not None:
                    rows.append(t)
                    cols.append(j)
            u = reasoner.parent[u]
    A = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(len(reasoner.names), len(genes)))
    A.data[:] = 1.0
    return A


def synthetic_block(reasoner: Reasoner, n_genes: int, n: int, nnz: int, seed: int,
                    programmes: sp.csr_matrix) -> sp.csr_matrix:
    """``n`` synthetic log-normalised cells (deterministic in ``seed``), made 2,000 at a time
    so the generator's own temporaries stay small beside what is measured."""
    rng = np.random.default_rng(seed)
    parts = []
    for lo in range(0, n, 2000):
        m = min(2000, n - lo)
        gaps = rng.geometric(nnz / n_genes, size=(m, int(nnz * 1.3) + 50)).astype(np.int32)
        pos = np.cumsum(gaps, axis=1, dtype=np.int32) - 1
        keep = pos < n_genes
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
        indices = pos[keep]
        del gaps, pos, keep
        bg = sp.csr_matrix((rng.uniform(0.3, 3.0, len(indices)).astype(np.float32), indices,
                            indptr), shape=(m, n_genes))
        leaves = np.flatnonzero(~reasoner.has_children)
        prog = programmes[rng.choice(leaves, m)].tocoo()
        on = rng.random(prog.nnz) < 0.5
        marks = sp.csr_matrix((rng.uniform(0.5, 3.0, int(on.sum())).astype(np.float32),
                               (prog.row[on], prog.col[on])), shape=(m, n_genes))
        parts.append((bg + marks).tocsr())
    X = sp.vstack(parts, format="csr")
    X.sort_indices()
    return X


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run(r: Reasoner, X, genes, conn=None, reasoning=True, evidence=None) -> None:
    for _ in r.iter_blocks(from_matrix(X, genes), conn, reasoning=reasoning,
                           evidence=evidence):
        pass


def _knn(n: int, k: int = 15, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    W = sp.csr_matrix((np.ones(n * k, np.float32), (np.repeat(np.arange(n), k),
                                                     rng.integers(0, n, n * k))), shape=(n, n))
    return ((W + W.T) > 0).astype(np.float32).tocsr()


def speed(args) -> pd.DataFrame:
    from cellreasoner.resources import load_gene_list

    gene_list = load_gene_list(args.gene_list)
    spec = EvidenceSpec(tuple(gene_list), 1000)
    plain = Reasoner(refine=False)
    genes = synthetic_genes(plain, args.genes, gene_list)
    progs = _programmes(plain, genes)
    t0 = time.perf_counter()
    X = sp.vstack([synthetic_block(plain, args.genes, min(20_000, args.cells - lo), args.nnz,
                                   lo, progs) for lo in range(0, args.cells, 20_000)],
                  format="csr")
    print(f"generated {X.shape[0]:,} x {X.shape[1]:,} ({X.nnz / X.shape[0]:.0f} nnz/cell) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    g = list(genes)
    _run(plain, X[:2000], g, evidence=spec)  # warm-up: imports, compiled kernels
    n = X.shape[0]
    refined = Reasoner()
    conn = _knn(n)
    rows = []
    for what, fn in [
        ("no traces", lambda: _run(plain, X, g, reasoning=False)),
        ("traces", lambda: _run(plain, X, g)),
        ("traces + evidence (the backend)", lambda: _run(plain, X, g, evidence=spec)),
        ("traces + evidence + refinement", lambda: _run(refined, X, g, evidence=spec)),
        ("traces + evidence + kNN smoothing", lambda: _run(plain, X, g, conn, evidence=spec)),
    ]:
        dt = timed(fn)
        rows.append({"input": f"synthetic: {what}", "cells": n, "seconds": round(dt, 2),
                     "cells/s": int(n / dt)})
        print(rows[-1], flush=True)
    rows.append(_sentence_row(plain, args.sentences))
    return pd.DataFrame(rows)


def _sentence_row(r: Reasoner, n_sentences: int) -> dict:
    import scanpy as sc

    raw = sc.datasets.pbmc68k_reduced().raw.to_adata()
    base = sp.csr_matrix(raw.X)
    genes = list(raw.var_names)
    sentences = [", ".join(genes[j] for j in base[i].indices) for i in range(base.shape[0])]
    sentences = (sentences * (n_sentences // len(sentences) + 1))[:n_sentences]
    dt = timed(lambda: r.annotate_sentences(sentences))
    mean_len = float(np.mean([s.count(",") + 1 for s in sentences]))
    return {"input": f"pbmc68k cell sentences (~{mean_len:.0f} genes), traces",
            "cells": len(sentences), "seconds": round(dt, 2),
            "cells/s": int(len(sentences) / dt)}


def memory(args) -> None:
    """Child process: the backend over generated blocks; prints the peak RSS."""
    from cellreasoner.backends.base import RunContext
    from cellreasoner.backends.builtin import BuiltinBackend
    from cellreasoner.resources import load_gene_list

    gene_list = load_gene_list(args.gene_list)
    be = BuiltinBackend(refine=not args.no_refine)
    be.configure(RunContext(tuple(gene_list), 1000))
    genes = synthetic_genes(be.reasoner, args.genes, gene_list)
    progs = _programmes(be.reasoner, genes)
    n = args.memory_cells

    def chunks(size: int):
        for lo in range(0, n, size):
            yield synthetic_block(be.reasoner, args.genes, min(size, n - lo), args.nnz, lo,
                                  progs)

    source = MatrixSource(n_obs=n, var_names=genes.astype(str),
                          obs_names=np.arange(n).astype(str), _chunks=chunks)
    t0 = time.perf_counter()
    done = sum(len(b) for b in be.annotate_matrix(source))
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"memory: {done:,} cells x {args.genes:,} genes (~{args.nnz} nnz/cell, refine="
          f"{not args.no_refine}) in {dt:.0f} s (generation included): peak RSS "
          f"{peak:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--genes", type=int, default=18_000)
    ap.add_argument("--nnz", type=int, default=1500)
    ap.add_argument("--sentences", type=int, default=20_000)
    ap.add_argument("--gene-list", default=None, help="ranked gene list (default: published)")
    ap.add_argument("--memory-cells", type=int, default=0)
    ap.add_argument("--no-refine", action="store_true", help="memory run without refinement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        memory(args)
        return
    if args.cells:
        pd.set_option("display.width", 160)
        print(speed(args).to_string(index=False))
    if args.memory_cells:
        cmd = [sys.executable, __file__, "--child", "--memory-cells", str(args.memory_cells),
               "--genes", str(args.genes), "--nnz", str(args.nnz)]
        if args.gene_list:
            cmd += ["--gene-list", args.gene_list]
        if args.no_refine:
            cmd.append("--no-refine")
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
