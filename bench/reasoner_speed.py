"""Throughput of the built-in marker reasoner (cells/s), without the slower accuracy runs.

Usage::

    python bench/reasoner_speed.py [--cells 200000] [--sentences 20000]

Real cells: ``scanpy.datasets.pbmc68k_reduced().raw`` tiled to ``--cells`` rows (expression
path: with and without reasoning traces, with kNN smoothing, from raw-like integer counts) and
its cells' sentences (non-zero genes, ``", "``-joined) repeated to ``--sentences`` (the
backend's prompt path).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellreasoner.backends.builtin.reasoner import Reasoner


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    import scanpy as sc

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--sentences", type=int, default=20_000)
    args = ap.parse_args()
    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.to_adata()
    base = sp.csr_matrix(raw.X, dtype=np.float32)
    genes = list(raw.var_names)
    reps = max(1, args.cells // base.shape[0])
    X = sp.vstack([base] * reps).tocsr()
    counts = X.copy()
    counts.data = np.expm1(counts.data).round()  # integer, count-like values
    conn = sp.kron(sp.identity(reps, format="csr"), a.obsp["connectivities"], format="csr")
    r = Reasoner()
    r.annotate_matrix(X[:1000], genes)  # warm-up (allocations, ontology lookups)
    n = X.shape[0]
    rows = []
    for what, fn in [
        ("matrix, no traces", lambda: r.annotate_matrix(X, genes, reasoning=False)),
        ("matrix, traces", lambda: r.annotate_matrix(X, genes)),
        ("matrix, traces, kNN smoothing",
         lambda: r.annotate_matrix(X, genes, connectivities=conn)),
        ("counts matrix (normalised inside), traces", lambda: r.annotate_matrix(counts, genes)),
    ]:
        dt = timed(fn)
        rows.append({"input": what, "cells": n, "seconds": round(dt, 2), "cells/s": int(n / dt)})
    sentences = [", ".join(genes[j] for j in base[i].indices) for i in range(base.shape[0])]
    sentences = (sentences * (args.sentences // len(sentences) + 1))[: args.sentences]
    dt = timed(lambda: r.annotate_sentences(sentences))
    mean_len = float(np.mean([s.count(",") + 1 for s in sentences]))
    rows.append({"input": f"cell sentences (~{mean_len:.0f} genes), traces",
                 "cells": len(sentences), "seconds": round(dt, 2),
                 "cells/s": int(len(sentences) / dt)})
    pd.set_option("display.width", 160)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
