"""Refit the built-in reasoner's confidence map and check it leave-one-dataset-out.

Usage::

    python bench/confidence.py [--shared ../shared]

Runs the ``annotate`` default (per cell + kNN) on the labelled datasets of
``bench/accuracy.py`` and collects, per cell, the label-free signals the confidence weighs
(:func:`cellreasoner.backends.builtin._confidence.signals`: the lineage margin, the lineage
evidence's strength, whether the kNN neighbours' own evidence leads to another lineage). On each
dataset in turn it fits the logistic map from those signals to the hierarchical score (soft
labels) and evaluates it on every dataset; the shipped constants (fitted on
tumour_immune_1000) are the last row. Printed per (fit, evaluated) pair: the calibration error
against the score (10 bins), the median confidence of score-0 cells, the AUROC of the
confidence for score > 0 against score 0, and the mean score of the most confident 90% / 70% /
50% of the cells.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np
from _common import ROOT, table
from accuracy import coverage_curve, ece, load_demo, load_pbmc68k, load_tumour

import cellreasoner as cr
from cellreasoner.backends.builtin import _confidence as C
from cellreasoner.evaluation import PairScorer


def collect(ds, scorer: PairScorer) -> dict[str, np.ndarray]:
    """Signals, status, shipped confidence and score of every cell of ``ds``."""
    with C.record() as rec:
        res = cr.annotate(ds.adata.copy(), "builtin", cache=False, progress=False)
    obs = res.adata.obs
    n = ds.adata.n_obs
    # one chunk here (under 20,000 cells): the walk with the neighbours comes last (before
    # it, the walk on the cell's own scores writes the traces' "own expression alone")
    parts = [p for p in rec.parts if len(p.best) == n][-1]
    score = np.asarray(scorer.score_many(list(ds.truth_read),
                                         list(obs["cellreasoner_label"].astype(str))))
    return {"X": C.signals(parts), "status": parts.status, "score": score,
            "conf": obs["cellreasoner_confidence"].to_numpy(float)}


def fit(d: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    """Logistic map (intercept, weights) fitted on the called cells, score as soft label."""
    from sklearn.linear_model import LogisticRegression

    m = d["status"] == 0
    X, s = d["X"][m], d["score"][m]
    model = LogisticRegression(C=100.0, max_iter=3000).fit(
        np.vstack([X, X]), np.r_[np.ones(len(X)), np.zeros(len(X))], sample_weight=np.r_[s, 1 - s])
    return float(model.intercept_[0]), model.coef_[0]


def evaluate(conf: np.ndarray, score: np.ndarray) -> dict[str, str]:
    from sklearn.metrics import roc_auc_score

    zero = score == 0
    cov = coverage_curve(conf, score)
    return {"ECE": f"{ece(conf, score):.3f}",
            "median conf @0": f"{np.median(conf[zero]):.3f}" if zero.any() else "",
            "AUROC": f"{roc_auc_score(~zero, conf):.3f}" if zero.any() and not zero.all() else "",
            **{f"kept {k}": f"{cov[k]:.3f}" for k in ("100%", "90%", "70%", "50%")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    scorer = PairScorer()
    data = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load in (lambda: load_demo(args.shared), lambda: load_tumour(args.shared),
                     load_pbmc68k):
            ds = load()
            data[ds.name] = collect(ds, scorer)
    fits = {name: fit(d) for name, d in data.items() if (d["score"] == 0).sum() >= 20}
    shipped = "shipped (fitted on tumour_immune_1000)"
    fits[shipped] = (
        C.INTERCEPT, np.array([C.GAP, C.STRENGTH, C.ELSEWHERE]))
    rows = []
    for fname, (b0, w) in fits.items():
        for name, d in data.items():
            called = C.probability(d["X"], b0, w)
            conf = np.where(d["status"] == 0, called, d["conf"])  # abstentions as shipped
            rows.append({"fitted on": fname, "intercept, margin, log strength, elsewhere":
                         ", ".join(f"{v:+.2f}" for v in (b0, *w)), "evaluated on": name,
                         "in sample": "yes" if fname == name or (fname == shipped and
                                                        name.startswith("tumour")) else "",
                         **evaluate(conf, d["score"])})
    cols = ["fitted on", "intercept, margin, log strength, elsewhere", "evaluated on",
            "in sample", "ECE", "median conf @0", "AUROC", "kept 100%", "kept 90%", "kept 70%",
            "kept 50%"]
    print(table(rows, cols, align="auto"))
    print("\n(pbmc_demo has no score-0 cell, so no map is fitted on it; its calibration error "
          "rests on 35 cells)")


if __name__ == "__main__":
    main()
