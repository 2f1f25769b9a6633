"""Accuracy and speed of the built-in marker reasoner, side by side with SingleR.

Usage::

    python bench/accuracy.py [--shared ../shared] [--seeds 5] [--speed-cells 200000]

Datasets (real, offline): the CellReasoner PBMC3k demo (``../shared/data/pbmc_demo.rds``,
Seurat tutorial labels) and ``scanpy.datasets.pbmc68k_reduced()`` (``.raw``, labels
``bulk_labels``, clusters ``louvain``, its kNN graph). Every prediction is scored against the
ground truth with the automatic hierarchical scorer :func:`cellreasoner.scoring.score_pair`
(1 subtype / 0.5 major / 0.25 partial / 0 incorrect).

Rows: the reasoner per cell, per cell with kNN smoothing, per cluster (all tissues, and
restricted to ``tissue="blood"``); SingleR trained on a stratified half of the same dataset and
evaluated on the other half (mean over ``--seeds`` splits; the reasoner's score on the same
held-out halves is printed beside it, since its knowledge base never sees the labels).
Then the builtin's most frequent answers per ground-truth label (to tell label noise from
reasoning errors), a confidence-calibration table and the reasoner's speed in cells/s.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellreasoner.reasoner import Reasoner
from cellreasoner.scoring import LEVELS, PairScorer

ROOT = Path(__file__).resolve().parents[1]


def load_demo(shared: Path):
    import scanpy as sc

    from cellreasoner.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read(shared / "data" / "pbmc_demo.rds")
    b = a.copy()
    if sp.issparse(b.X) and np.all(np.mod(b.X.data, 1) == 0):
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=10)
    sc.pp.neighbors(b, n_neighbors=5)
    sc.tl.leiden(b, resolution=1.0, flavor="igraph", n_iterations=2, directed=False)
    return {
        "name": "PBMC3k demo (35 cells)",
        "X": sp.csr_matrix(b.X),
        "genes": list(a.var_names),
        "truth": a.obs["seurat_annotations"].astype(str).to_numpy(),
        "clusters": b.obs["leiden"].astype(str).to_numpy(),
        "connectivities": b.obsp["connectivities"],
    }


def load_pbmc68k():
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.to_adata()
    return {
        "name": "pbmc68k_reduced (700 cells)",
        "X": sp.csr_matrix(raw.X),
        "genes": list(raw.var_names),
        "truth": a.obs["bulk_labels"].astype(str).to_numpy(),
        "clusters": a.obs["louvain"].astype(str).to_numpy(),
        "connectivities": a.obsp["connectivities"],
    }


def summarize(scores: np.ndarray) -> dict:
    row = {"mean": float(np.mean(scores)) if len(scores) else float("nan"), "n": len(scores)}
    for level, name in LEVELS.items():
        row[name] = float(np.mean(scores == level)) if len(scores) else float("nan")
    return row


def reasoner_predictions(ds: dict, tissue: str | None) -> dict[str, np.ndarray]:
    r = Reasoner(tissue=tissue)
    out = {}
    out["per cell"] = r.annotate_matrix(ds["X"], ds["genes"], reasoning=False).label
    out["per cell + kNN smoothing"] = r.annotate_matrix(
        ds["X"], ds["genes"], connectivities=ds["connectivities"], reasoning=False).label
    res, keys = r.annotate_groups(ds["X"], ds["genes"], ds["clusters"], reasoning=False)
    lut = dict(zip(keys, res.label, strict=True))
    out["per cluster"] = np.array([lut[c] for c in ds["clusters"].astype(str)], dtype=object)
    return out


def confusion(truth: list[str], pred: np.ndarray, scorer: PairScorer, top: int = 4
              ) -> pd.DataFrame:
    """The ``top`` most frequent predictions per ground-truth label, with their score."""
    s = scorer.score_many(truth, list(pred))
    df = pd.DataFrame({"truth": truth, "prediction": pred, "score": s})
    out = (df.groupby(["truth", "prediction"]).agg(cells=("score", "size"),
                                                   score=("score", "first"))
           .reset_index().sort_values(["truth", "cells"], ascending=[True, False]))
    return out.groupby("truth").head(top).set_index(["truth", "prediction"])


def stratified_half(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        train.extend(idx[: max(1, len(idx) // 2)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[train] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def singler_predict(ds: dict, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    import singler

    X = ds["X"]
    ref = np.asarray(X[train].todense()).T
    tst = np.asarray(X[test].todense()).T
    res = singler.annotate_single(
        test_data=tst, ref_data=ref, ref_labels=list(ds["truth"][train]),
        test_features=ds["genes"], ref_features=ds["genes"])
    return np.asarray(res.column("best"), dtype=object)


def calibration(ds: dict, scorer: PairScorer) -> pd.DataFrame:
    res = Reasoner().annotate_matrix(ds["X"], ds["genes"], reasoning=False)
    s = scorer.score_many(list(ds["truth"]), list(res.label))
    bins = pd.cut(res.confidence, [0, 0.25, 0.5, 0.75, 0.9, 1.0], include_lowest=True)
    df = pd.DataFrame({"confidence": bins, "score": s, "lineage_ok": s > 0})
    return df.groupby("confidence", observed=True).agg(
        cells=("score", "size"), mean_score=("score", "mean"), lineage_right=("lineage_ok", "mean"))


def speed(ds: dict, n_cells: int) -> pd.DataFrame:
    reps = max(1, n_cells // ds["X"].shape[0])
    X = sp.vstack([ds["X"]] * reps).tocsr()
    r = Reasoner()
    rows = []
    for reasoning in (False, True):
        t0 = time.perf_counter()
        r.annotate_matrix(X, ds["genes"], reasoning=reasoning)
        dt = time.perf_counter() - t0
        rows.append({"cells": X.shape[0], "traces": reasoning, "seconds": round(dt, 2),
                     "cells/s": int(X.shape[0] / dt)})
    conn = sp.kron(sp.identity(reps, format="csr"), ds["connectivities"], format="csr")
    t0 = time.perf_counter()
    r.annotate_matrix(X, ds["genes"], connectivities=conn, reasoning=False)
    dt = time.perf_counter() - t0
    rows.append({"cells": X.shape[0], "traces": "no (+kNN smoothing)", "seconds": round(dt, 2),
                 "cells/s": int(X.shape[0] / dt)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--seeds", type=int, default=5, help="SingleR half/half splits (default 5)")
    ap.add_argument("--speed-cells", type=int, default=200_000,
                    help="cells for the speed test (pbmc68k tiled; default 200000)")
    args = ap.parse_args()
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    scorer = PairScorer()
    datasets = [load_demo(args.shared), load_pbmc68k()]
    rows = []
    per_label = {}
    confusions = {}
    for ds in datasets:
        truth = list(ds["truth"])
        by_label = pd.DataFrame({"truth": truth})
        for tissue in (None, "blood"):
            for method, pred in reasoner_predictions(ds, tissue).items():
                s = scorer.score_many(truth, list(pred))
                if tissue is None:
                    by_label[f"builtin {method}"] = s
                    if method == "per cell":
                        confusions[ds["name"]] = confusion(truth, pred, scorer)
                rows.append({"dataset": ds["name"],
                             "method": f"builtin {method}" + (f" [tissue={tissue}]" if tissue
                                                              else ""),
                             **summarize(s)})
        held_r, held_s = [], []
        singler_sum = np.zeros(len(truth))
        singler_n = np.zeros(len(truth))
        for seed in range(args.seeds):
            train, test = stratified_half(ds["truth"], seed)
            pred_s = singler_predict(ds, train, test)
            held_s.append(scorer.score_many([truth[i] for i in test], list(pred_s)))
            np.add.at(singler_sum, test, held_s[-1])
            np.add.at(singler_n, test, 1)
            pred_r = Reasoner().annotate_matrix(ds["X"][test], ds["genes"],
                                                reasoning=False).label
            held_r.append(scorer.score_many([truth[i] for i in test], list(pred_r)))
        rows.append({"dataset": ds["name"],
                     "method": f"SingleR (trained on other half, {args.seeds} splits)",
                     **summarize(np.concatenate(held_s))})
        rows.append({"dataset": ds["name"],
                     "method": "builtin per cell on the same held-out halves",
                     **summarize(np.concatenate(held_r))})
        by_label["SingleR (held-out)"] = np.where(singler_n > 0, singler_sum /
                                                  np.maximum(singler_n, 1), np.nan)
        per_label[ds["name"]] = by_label.groupby("truth").agg(
            cells=("truth", "size"), **{c: (c, "mean") for c in by_label.columns[1:]})
    table = pd.DataFrame(rows)
    fmt = {c: "{:.3f}".format for c in ["mean", *LEVELS.values()]}
    print("\n== Hierarchical score (mean) and 4-level distribution ==")
    print(table.to_string(index=False, formatters=fmt))
    for name, tab in per_label.items():
        print(f"\n== Mean score per ground-truth label: {name} ==")
        print(tab.to_string(float_format="{:.2f}".format))
    for name, tab in confusions.items():
        print(f"\n== Builtin per cell: most frequent answers per ground-truth label: {name} ==")
        print(tab.to_string(float_format="{:.2f}".format))
    print("\n== Calibration on pbmc68k_reduced (per cell, all tissues) ==")
    print(calibration(datasets[1], scorer).to_string(float_format="{:.3f}".format))
    print(f"\n== Speed (pbmc68k_reduced tiled to ~{args.speed_cells:,} cells) ==")
    print(speed(datasets[1], args.speed_cells).to_string(index=False))


if __name__ == "__main__":
    main()
