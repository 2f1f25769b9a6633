"""The built-in reasoner's confidence: label-free signals of one cell's call, combined into
the probability that the call is right.

The walk (:mod:`._decisions`) records, per cell, what its call rests on
(:class:`ConfidenceParts`): the best lineage score and its margin over the second-best
lineage, the sharpness of every subtype step the markers took, the steps a self-trained
classifier took (and how sure it was), the steps taken on the kNN neighbours' evidence, and
whether the neighbours' own evidence leads to another lineage. :func:`combine` maps them to a
probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    step_sharpness
        Product over the marker-taken subtype steps of ``0.5 + 0.5 * sharpness``.
    refined_steps, refined_prob
        Steps taken by a self-trained classifier, and the product of its probabilities.
    borrowed
        Steps taken on the kNN neighbours' evidence.
    neighbours_elsewhere
        The kNN neighbours' own evidence leads to another lineage (or to none).
    """

    lineage_scores: np.ndarray
    best: np.ndarray
    second: np.ndarray
    status: np.ndarray
    step_sharpness: np.ndarray = field(default=None)  # type: ignore[assignment]
    refined_steps: np.ndarray = field(default=None)  # type: ignore[assignment]
    refined_prob: np.ndarray = field(default=None)  # type: ignore[assignment]
    borrowed: np.ndarray = field(default=None)  # type: ignore[assignment]
    neighbours_elsewhere: np.ndarray = field(default=None)  # type: ignore[assignment]
    refined_factor: np.ndarray = field(default=None)  # type: ignore[assignment]

    @classmethod
    def start(cls, R: np.ndarray, best: np.ndarray, second: np.ndarray, status: np.ndarray
              ) -> ConfidenceParts:
        """The lineage-level parts; the steps start neutral."""
        n = len(best)
        return cls(R, best, second, status, np.ones(n), np.zeros(n, np.int8), np.ones(n),
                   np.zeros(n, np.int8), np.zeros(n, dtype=bool), np.ones(n))

    def step(self, cells: np.ndarray, sharpness: np.ndarray, refined: np.ndarray) -> None:
        """Record one depth's accepted steps: ``sharpness`` per cell (for a classifier's
        step, half its probability, as :meth:`._decisions.Decisions._refine_step` gives)."""
        self.step_sharpness[cells[~refined]] *= 0.5 + 0.5 * sharpness[~refined]
        c = cells[refined]
        self.refined_steps[c] += 1
        self.refined_prob[c] *= 2.0 * sharpness[refined]
        self.refined_factor[c] *= 0.5 + 0.5 * sharpness[refined]

    def neighbours(self, own_lineage: np.ndarray, their_lineage: np.ndarray) -> None:
        """Record whether the neighbours' evidence alone leads to the cell's lineage."""
        self.neighbours_elsewhere = (own_lineage >= 0) & (their_lineage != own_lineage)


def combine(parts: ConfidenceParts) -> np.ndarray:
    """The confidence of each cell's call (float32 in [0, 1])."""
    R, s1 = parts.lineage_scores, parts.best
    z = np.exp(12.0 * (R - s1[:, None]))
    p_root = 1.0 / z.sum(axis=1)
    strength = 1.0 / (1.0 + np.exp(-(s1 - 0.3) / 0.06))
    refined = parts.refined_factor
    conf = p_root * strength * parts.step_sharpness * refined
    status = parts.status
    conf = np.where(status == 0, conf, np.minimum(conf, 0.2) * (status == 2) +
                    (status == 1) * strength * 0.5)
    return np.clip(conf, 0.0, 1.0).astype(np.float32)
