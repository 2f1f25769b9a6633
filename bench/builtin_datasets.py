"""The built-in reasoner on every labelled dataset at hand, as ``cellreasoner annotate`` runs it.

Usage::

    python bench/builtin_datasets.py [--shared ../shared] [--modes cell,cluster,hybrid]
                                     [--per-label]

Datasets (real, offline): ``../shared/data/tumour_immune_1000.h5ad`` (labels
``cell_type_annotations``, read through its truth map), ``scanpy.datasets.pbmc68k_reduced()``
(``.raw``, labels ``bulk_labels``, its kNN graph) and ``../shared/data/pbmc_demo.rds``
(``seurat_annotations``). Each is annotated with :func:`cellreasoner.annotate` defaults
(per cell, kNN smoothing where the data has a graph) and, with ``--modes``, per cluster and
hybrid (automatic Leiden clusters). Every prediction is scored with the hierarchical scorer
(:class:`cellreasoner.evaluation.PairScorer`: 1 / 0.5 / 0.25 / 0).

Columns: mean score; the fraction of cells scoring 0; the median confidence of the cells that
score 0 (a confidence that ranks errors keeps it low); the expected calibration error of the
confidence against the score (10 equal-width bins, weighted by cells); the mean confidence;
for cluster mode the fraction of cells in clusters flagged mixed.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, table

import cellreasoner as cr
from cellreasoner.evaluation import PairScorer
from cellreasoner.evaluation.truth import read_truth_map, scoring_text, truth_readings


def load_tumour(shared: Path):
    import anndata as ad

    path = shared / "data" / "tumour_immune_1000.h5ad"
    a = ad.read_h5ad(path)
    truth = a.obs["cell_type_annotations"].astype(str).to_numpy()
    tmap = read_truth_map(shared / "data" / "tumour_immune_1000.truth_map.tsv")
    return "tumour_immune_1000", a, scoring_text(truth, truth_readings(truth, tmap))


def load_pbmc68k(shared: Path):
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    b = a.raw.to_adata()
    b.obsp["connectivities"] = a.obsp["connectivities"]
    return "pbmc68k_reduced", b, a.obs["bulk_labels"].astype(str).to_numpy()


def load_demo(shared: Path):
    from cellreasoner.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read(shared / "data" / "pbmc_demo.rds")
    return "pbmc_demo", a, a.obs["seurat_annotations"].astype(str).to_numpy()


def ece(conf: np.ndarray, score: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of ``conf`` against ``score`` (equal-width bins)."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    out = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out += sel.mean() * abs(conf[sel].mean() - score[sel].mean())
    return float(out)


def run(name: str, adata, truth: np.ndarray, mode: str, scorer: PairScorer) -> tuple[dict,
                                                                                    pd.DataFrame]:
    a = adata.copy()
    if mode != "cell":
        a.obs.pop("leiden") if "leiden" in a.obs else None
    t0 = time.perf_counter()
    res = cr.annotate(a, mode=mode, progress=False, cache=False)
    secs = time.perf_counter() - t0
    t = res.table
    label = (t["cluster_label"] if mode == "cluster" else t["label"]).astype(str).to_numpy()
    conf = t["confidence"].to_numpy(dtype=float)
    s = scorer.score_many(list(truth), list(label))
    zero = s == 0
    row = {"dataset": name, "mode": mode, "cells": len(s), "mean score": f"{s.mean():.3f}",
           "score 0": f"{zero.mean():.3f}",
           "median conf | score 0": f"{np.median(conf[zero]):.2f}" if zero.any() else "-",
           "ECE": f"{ece(conf, s):.3f}", "mean conf": f"{conf.mean():.2f}",
           "seconds": f"{secs:.1f}"}
    if "cluster_mixed" in t:
        row["mixed cells"] = f"{t['cluster_mixed'].astype(bool).mean():.2f}"
    per = (pd.DataFrame({"truth": truth, "prediction": label, "score": s})
           .groupby(["truth", "prediction"]).agg(cells=("score", "size"),
                                                score=("score", "first"))
           .reset_index().sort_values(["truth", "cells"], ascending=[True, False]))
    per.insert(0, "dataset", name)
    return row, per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    p.add_argument("--modes", default="cell,cluster,hybrid")
    p.add_argument("--per-label", action="store_true",
                   help="also print the most frequent predictions per truth label")
    args = p.parse_args()
    logging.getLogger("cellreasoner").setLevel(logging.ERROR)
    scorer = PairScorer()
    rows, pers = [], []
    for load in (load_tumour, load_pbmc68k, load_demo):
        name, adata, truth = load(args.shared)
        for mode in args.modes.split(","):
            row, per = run(name, adata, truth, mode, scorer)
            rows.append(row)
            if mode == "cell":
                pers.append(per)
    cols = ["dataset", "mode", "cells", "mean score", "score 0", "median conf | score 0",
            "ECE", "mean conf", "mixed cells", "seconds"]
    print(table(rows, cols, align="auto"))
    if args.per_label:
        per = pd.concat(pers).groupby(["dataset", "truth"]).head(3)
        print()
        print(per.to_string(index=False))


if __name__ == "__main__":
    main()
