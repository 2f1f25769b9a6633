"""Agreement of the automatic CL scorer with CellReasoner's hand-judged pair scores.

Usage::

    python bench/scorer_agreement.py [pair_scores_dev.csv] [--top N] [--show-disagreements K]

Prints the exact 4-level agreement, the 4x4 confusion table (judged x automatic), the labels
with the largest mean-score differences, and the runtime (cold: CL index + label grounding;
warm: re-scoring with everything memoised).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pair_scores_dev.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--top", type=int, default=15, help="labels to list (default 15)")
    ap.add_argument("--show-disagreements", type=int, default=0,
                    help="print K sample disagreements with the rule that fired (default 0)")
    args = ap.parse_args(argv)

    from cellreasoner.evaluation import LEVELS, PairScorer

    df = pd.read_csv(args.path)
    truths = df["Ground Truth"].astype(str).tolist()
    preds = df["Model Prediction"].astype(str).tolist()
    judged = df["Evaluation Score"].astype(float).to_numpy()

    t0 = time.perf_counter()
    scorer = PairScorer()
    auto = scorer.score_many(truths, preds)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer.score_many(truths, preds)
    warm = time.perf_counter() - t0

    from cellreasoner.ontology import map_label

    def grounded(text: str) -> bool:
        m = map_label(text)
        return m.id is not None or bool(m.alternatives)

    for name, col in (("ground truth", truths), ("prediction", preds)):
        uniq = sorted(set(col))
        ok = {u: grounded(u) for u in uniq}
        print(f"{name:>12} labels grounded in CL: {np.mean(list(ok.values())):.3f} of "
              f"{len(uniq)} unique, {np.mean([ok[x] for x in col]):.3f} of pairs")
    agree = float(np.mean(auto == judged))
    print(f"pairs: {len(df)}   exact 4-level agreement: {agree:.4f}   "
          f"mean |diff|: {np.mean(np.abs(auto - judged)):.4f}")
    print(f"mean score  judged: {judged.mean():.4f}   automatic: {auto.mean():.4f}")
    print()
    levels = sorted(LEVELS, reverse=True)
    conf = pd.crosstab(pd.Categorical(judged, levels), pd.Categorical(auto, levels),
                       rownames=["judged"], colnames=["automatic"], dropna=False)
    conf.index = [f"{v:g} {LEVELS[v]}" for v in conf.index]
    conf.columns = [f"{v:g}" for v in conf.columns]
    print(conf.to_string())
    print()
    per = pd.DataFrame({"truth": truths, "judged": judged, "auto": auto})
    g = per.groupby("truth").agg(n=("judged", "size"), judged=("judged", "mean"),
                                 auto=("auto", "mean"))
    g["diff"] = g["auto"] - g["judged"]
    g = g.reindex(g["diff"].abs().sort_values(ascending=False).index)
    print(f"top {args.top} ground-truth labels by |mean automatic - mean judged|:")
    print(g.head(args.top).round(3).to_string())
    print()
    print(f"runtime: cold {cold:.2f} s ({len(df) / cold:,.0f} pairs/s), "
          f"warm {warm * 1e3:.1f} ms")
    if args.show_disagreements:
        dis = per[per.judged != per.auto].sample(
            min(args.show_disagreements, int((per.judged != per.auto).sum())), random_state=0)
        for t, j, a, p in zip(dis.truth, dis.judged, dis.auto,
                              [preds[i] for i in dis.index], strict=True):
            print(f"  judged {j:<4g} auto {a:<4g} {t!r} vs {p[:50]!r}: {scorer.explain(t, p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
