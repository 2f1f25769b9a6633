"""The score levels and the label metrics (macro-F1 on Cell Ontology terms).

:data:`LEVELS` is the one table of level names; :data:`LEVEL_COLUMNS` names the summary column
that counts each level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: The four levels of the CellReasoner evaluation (score -> name).
LEVELS: dict[float, str] = {1.0: "Subtype correct", 0.5: "Major correct",
                            0.25: "Partially correct", 0.0: "Incorrect"}
#: Lower-case level name -> score (for judged tables and judge answers).
LEVEL_BY_NAME: dict[str, float] = {v.lower(): k for k, v in LEVELS.items()}

#: Level columns of the summary, from the score they count (1 / .5 / .25 / 0).
LEVEL_COLUMNS: dict[float, str] = {
    1.0: "subtype_correct",
    0.5: "major_correct",
    0.25: "partially_correct",
    0.0: "incorrect",
}

#: Class name given to labels that do not map to a Cell Ontology term (macro-F1).
UNMAPPED = "unmapped"


def level_order() -> list[str]:
    """Level names from best (``"Subtype correct"``) to worst (``"Incorrect"``)."""
    return [LEVELS[k] for k in sorted(LEVELS, reverse=True)]


def ground_ids(texts: np.ndarray) -> np.ndarray:
    """CL id of every text (``map_label``, memoised), :data:`UNMAPPED` where there is none."""
    from ..ontology import ground_labels

    ids, _ = ground_labels(texts)
    return np.where(ids == "", UNMAPPED, ids).astype(object)


def macro_f1(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-averaged F1 over the classes present in ``truth``.

    Equivalent to ``sklearn.metrics.f1_score(truth, pred, labels=unique(truth),
    average="macro")``: every true cell type weighs the same; wrong predictions lower the
    precision of the class they name (when it is a true class) and the recall of the true class.

    Parameters
    ----------
    truth, pred
        Class labels (here CL ids, with :data:`UNMAPPED` as a class of its own).

    Returns
    -------
    float
        Mean per-class F1; ``nan`` for empty input.
    """
    t = np.asarray(truth, dtype=object)
    p = np.asarray(pred, dtype=object)
    if len(t) == 0:
        return float("nan")
    f1s = []
    for c in pd.unique(t):
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def exact_cl_accuracy(truth_cl: Sequence[str], pred_cl: Sequence[str]) -> float:
    """Fraction of cells whose predicted CL id is the truth's CL id.

    Stricter than the subtype level (score 1), which also counts a neighbouring subtype of the
    same anchor (effector memory CD8 T cell for naive CD8 T cell). A truth without a CL term
    (:data:`UNMAPPED`) never matches.

    Parameters
    ----------
    truth_cl, pred_cl
        CL ids of the truth and the prediction per cell (:data:`UNMAPPED` allowed).

    Returns
    -------
    float
        The fraction; ``nan`` for empty input.
    """
    t = np.asarray(truth_cl, dtype=object)
    p = np.asarray(pred_cl, dtype=object)
    if len(t) == 0:
        return float("nan")
    return float(np.mean((t == p) & (t != UNMAPPED)))


def collapse_to_truth(truth_cl: Sequence[str], pred_cl: Sequence[str]) -> np.ndarray:
    """Predicted CL ids, with a prediction at or below the truth's term replaced by that term.

    A more specific correct answer (``"CD8-positive, alpha-beta T cell"`` for truth
    ``"T cell"``) then counts as a hit in :func:`macro_f1`; anything else is left as predicted.

    Parameters
    ----------
    truth_cl, pred_cl
        CL ids of the truth and the prediction per cell (:data:`UNMAPPED` allowed).

    Returns
    -------
    numpy.ndarray
        The collapsed prediction ids.
    """
    from ..ontology import get_ontology

    onto = get_ontology()
    out = np.asarray(pred_cl, dtype=object).copy()
    memo: dict[tuple[str, str], bool] = {}
    for i, (t, p) in enumerate(zip(truth_cl, out, strict=True)):
        if t == p or UNMAPPED in (t, p):
            continue
        if (t, p) not in memo:
            memo[(t, p)] = onto.is_ancestor(t, p)
        if memo[(t, p)]:
            out[i] = t
    return out
