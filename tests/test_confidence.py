"""The built-in reasoner's confidence: a probability of the call being right, built from
label-free signals (see ``backends/builtin/_confidence.py``), that ranks errors on real data."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from cellreasoner.backends.builtin import _confidence as C
from cellreasoner.backends.builtin.reasoner import Reasoner
from cellreasoner.evaluation import PairScorer


def _parts(best, second, status=None, elsewhere=None) -> C.ConfidenceParts:
    best, second = np.asarray(best, float), np.asarray(second, float)
    n = len(best)
    p = C.ConfidenceParts.start(np.column_stack([best, second]), best, second,
                                np.zeros(n, np.int8) if status is None else np.asarray(status))
    if elsewhere is not None:
        p.neighbours_elsewhere = np.asarray(elsewhere, dtype=bool)
    return p


def test_confidence_grows_with_the_lineage_margin_and_falls_when_neighbours_differ():
    margins = np.linspace(0.0, 0.9, 10)
    conf = C.combine(_parts(0.9 * np.ones(10), 0.9 - margins))
    assert (np.diff(conf[margins <= C.GAP_CAP]) > 0).all()
    assert np.allclose(conf[margins >= C.GAP_CAP], conf[-1])  # beyond the cap: no surer
    assert 0.5 < conf[-1] < 0.97 and conf[0] < 0.8
    weak, strong = C.combine(_parts([0.35, 0.9], [0.05, 0.6]))  # same margin
    assert weak < strong
    here, there = C.combine(_parts([0.8, 0.8], [0.4, 0.4], elsewhere=[False, True]))
    assert there < here
    # abstentions: no lineage evidence, or two unrelated lineages at once
    none, tie = C.combine(_parts([0.1, 0.9], [0.0, 0.89], status=[1, 2]))
    assert none < 0.1 and tie <= 0.2


def test_record_keeps_parts_only_inside_its_block():
    p = _parts([0.8], [0.2])
    C.combine(p)
    with C.record() as rec:
        C.combine(p)
    C.combine(p)
    assert rec.parts == [p]


def test_confidence_ranks_errors_on_pbmc68k(pbmc68k):
    """On real data whose labels it never saw: cells scored 0 against ``bulk_labels`` get a
    lower confidence than the rest, the most confident half is more accurate than all, and
    the mean confidence is within 0.05 of the mean score."""
    raw = pbmc68k.raw.to_adata()
    res = Reasoner().annotate_matrix(raw.X, list(raw.var_names),
                                     connectivities=pbmc68k.obsp["connectivities"],
                                     reasoning=False)
    score = np.asarray(PairScorer().score_many(list(pbmc68k.obs["bulk_labels"].astype(str)),
                                               list(res.label)))
    conf = np.asarray(res.confidence, float)
    wrong = score == 0
    assert 30 < wrong.sum() < 200
    assert np.median(conf[wrong]) < np.median(conf[~wrong]) - 0.04
    assert roc_auc_score(~wrong, conf) > 0.75  # was 0.70 with the former product formula
    top = np.argsort(-conf)[: len(conf) // 2]
    assert score[top].mean() > score.mean() + 0.05
    assert abs(conf.mean() - score.mean()) < 0.05


def test_walk_records_neighbours_of_another_lineage():
    """A well-measured T cell among B cells keeps its call; the walk records that its
    neighbours' evidence leads elsewhere, which lowers its confidence."""
    import scipy.sparse as sp

    reasoner = Reasoner(refine=False)
    genes = list(reasoner.genes)
    col = {g: j for j, g in enumerate(genes)}
    b_cell = ["MS4A1", "CD79A", "CD79B", "CD19", "PAX5", "BANK1"]
    t_cell = ["CD3E", "CD3D", "CD3G", "TRAC", "CD2", "CD5", "CD6"]
    X = np.zeros((7, len(genes)), dtype=np.float32)
    for i, expressed in enumerate([b_cell] * 5 + [t_cell, t_cell]):
        X[i, [col[g] for g in expressed]] = 2.5
    W = sp.lil_matrix((7, 7), dtype=np.float32)
    for i in range(5):  # the B cells are each other's neighbours, and cell 5's
        for j in range(5):
            if i != j:
                W[i, j] = 1.0
        W[5, i] = 1.0  # cell 6 has no neighbours
    with C.record() as rec:
        res = reasoner.annotate_matrix(sp.csr_matrix(X), genes, connectivities=W.tocsr(),
                                       reasoning=False)
    parts = rec.parts[-1]
    assert res.lineage.tolist() == ["B cell"] * 5 + ["T cell"] * 2
    assert parts.neighbours_elsewhere.tolist() == [False] * 5 + [True, False]
    alone = C.ConfidenceParts.start(parts.lineage_scores[5:6], parts.best[5:6],
                                    parts.second[5:6], parts.status[5:6])
    assert res.confidence[5] < C.combine(alone)[0]
