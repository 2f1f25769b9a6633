"""The built-in reasoner's confidence: label-free signals of one cell's call, combined into
the probability that the call is right.

The walk (:mod:`._decisions`) records, per cell, what its call rests on
(:class:`ConfidenceParts`): the lineage scores, the best lineage score and its margin over the
second-best lineage, and whether the neighbours' own evidence leads to another lineage.
:func:`combine` maps those signals (:func:`signals`) to a probability; :func:`record` keeps
the parts of a run for refitting the map (``bench/confidence.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np


@dataclass
class ConfidenceParts:
    """Per-cell components of the confidence (arrays of one length).

    Attributes
    ----------
    lineage_scores
        Cells x lineage roots scores the lineage was chosen on.
    best, second
        The best and second-best lineage score.
    status
        0 (called), 1 (no lineage evidence), 2 (contradictory lineages).
    neighbours_elsewhere
        The kNN neighbours' own evidence leads to another lineage (or to none).
    """

    lineage_scores: np.ndarray
    best: np.ndarray
    second: np.ndarray
    status: np.ndarray
    neighbours_elsewhere: np.ndarray

    @classmethod
    def start(cls, R: np.ndarray, best: np.ndarray, second: np.ndarray, status: np.ndarray
              ) -> ConfidenceParts:
        """The lineage-level parts (no neighbours elsewhere until recorded)."""
        return cls(R, best, second, status, np.zeros(len(best), dtype=bool))

    def neighbours(self, own_lineage: np.ndarray, their_lineage: np.ndarray) -> None:
        """Record whether the neighbours' evidence alone leads to the cell's lineage."""
        self.neighbours_elsewhere = (own_lineage >= 0) & (their_lineage != own_lineage)


#: The map from the parts to a probability::
#:
#:     logit = INTERCEPT + GAP * min(margin, GAP_CAP) + STRENGTH * log(strength)
#:             + ELSEWHERE * neighbours_elsewhere
#:
#: ``margin`` is the best lineage score's lead over the second-best lineage, ``strength`` the
#: best lineage score's logistic strength (``1 / (1 + exp(-(best - 0.3) / 0.06))``). Fitted
#: (logistic regression, each cell weighted by its hierarchical score as a soft label; ``python
#: bench/confidence.py`` refits it and prints the leave-one-dataset-out table) on
#: tumour_immune_1000 alone, read through its truth map, and evaluated on pbmc68k_reduced and
#: pbmc_demo, whose labels it never saw. Of the label-free signals measured (lineage margin
#: and score, the subtype steps' sharpness, classifier and neighbour steps, the neighbours'
#: own lineage and margin), the lineage margin ranks errors best on every dataset (AUROC
#: 0.82); the subtype and classifier terms did not transfer between datasets (their fitted
#: signs flipped between tumour_immune_1000 and pbmc68k), so they are left out. Beyond a 0.6
#: lead, more lead says nothing more.
INTERCEPT = 1.24
GAP = 2.15
GAP_CAP = 0.6
STRENGTH = 1.90
ELSEWHERE = -0.31


def strength_of(best: np.ndarray) -> np.ndarray:
    """The strength of the best lineage score: 0.5 at 0.3, near 1 from 0.6 on."""
    return 1.0 / (1.0 + np.exp(-(best - 0.3) / 0.06))


def signals(parts: ConfidenceParts) -> np.ndarray:
    """Cells x 3 signals the map weighs: capped lineage margin, log strength, neighbours
    elsewhere (the columns of :data:`GAP`, :data:`STRENGTH`, :data:`ELSEWHERE`)."""
    margin = np.minimum(parts.best - parts.second, GAP_CAP)
    return np.column_stack([margin, np.log(strength_of(parts.best)),
                            parts.neighbours_elsewhere.astype(float)])


def probability(X: np.ndarray, intercept: float = INTERCEPT,
                weights: np.ndarray | None = None) -> np.ndarray:
    """The logistic map of :func:`signals` rows (the shipped constants by default)."""
    w = np.array([GAP, STRENGTH, ELSEWHERE]) if weights is None else weights
    return 1.0 / (1.0 + np.exp(-(intercept + X @ w)))


def combine(parts: ConfidenceParts) -> np.ndarray:
    """The confidence of each cell's call: the probability that it is right (float32).

    A called cell gets the logistic map above; an abstention (status 1, no lineage evidence;
    status 2, contradictory lineages) stays low: half the lineage evidence's strength, or at
    most 0.2.
    """
    for rec in _RECORDERS:
        rec.parts.append(parts)
    called = probability(signals(parts))
    status = parts.status
    conf = np.where(status == 0, called, np.where(status == 2, np.minimum(called, 0.2),
                                                  0.5 * strength_of(parts.best)))
    return np.clip(conf, 0.0, 1.0).astype(np.float32)


class Recorder:
    """Keeps the parts of every :func:`combine` call made inside ``with record() as rec:``
    (for refitting the map: ``bench/confidence.py``); nothing is kept otherwise."""

    def __init__(self) -> None:
        self.parts: list[ConfidenceParts] = []


_RECORDERS: list[Recorder] = []


@contextmanager
def record() -> Iterator[Recorder]:
    """``with record() as rec: ...`` collects ``rec.parts``."""
    rec = Recorder()
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)
