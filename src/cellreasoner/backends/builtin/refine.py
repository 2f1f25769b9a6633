"""Self-training refinement of subtype steps that the marker evidence cannot decide.

Marker genes drop out: a CD8 T cell whose CD8A and CD8B reads were not captured can only be
split from CD4 T cells on soft markers shared by both. Following Garnett (Pliner et al. 2019,
Nat Methods) and SCINA-style semi-supervised typing, the cells of the *same dataset* whose
subtype step rests on a decisive marker (a marker of the chosen child with weight >= 2, and
none of its siblings') become training cells for a classifier over the rest of the
transcriptome; the decisive markers themselves are left out of its features, so it learns what
else tells the subtypes apart. Steps without a decisive marker (a soft call to a subtype the
classifier knows, a borrowed kNN call, or no call) are then taken by that classifier when it is
confident, and the walk goes on from there. No labels are used, the lineage is never changed,
and neither is a step that rests on a decisive marker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

#: A marker of at least this weight is decisive for its type.
DECISIVE_WEIGHT = 2.0
#: Cells handled at a time in dense or per-cell work (bounds memory on large datasets).
BLOCK = 20_000
#: Rows a training sample may store, as a multiple of those it keeps, before it drops the
#: others (each drop copies the kept rows once).
SLACK = 1.25


@dataclass
class StepClassifier:
    """A classifier for the children of one knowledge-base type."""

    children: np.ndarray
    features: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    #: genes x children weights, zero off the features (made at the first prediction)
    _weights: np.ndarray | None = field(default=None, repr=False, compare=False)

    def predict(self, X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """(child, probability) per row of a log-normalised cells x genes matrix."""
        from scipy.special import expit, softmax

        # genes x children weights, zero off the features: the same sums as on the feature
        # columns (each row's terms in the same order, plus exact zeros; values are >= 0),
        # without copying the cells' feature columns
        if self._weights is None or self._weights.shape[0] != X.shape[1]:
            self._weights = np.zeros((X.shape[1], self.coef.shape[0]), dtype=self.coef.dtype)
            self._weights[self.features] = self.coef.T
        z = np.asarray(X @ self._weights, dtype=np.float64) + self.intercept
        if len(self.children) == 2 and z.shape[1] == 1:  # binary: one logit
            p1 = expit(z[:, 0])
            proba = np.column_stack([1.0 - p1, p1])
        else:
            proba = softmax(z, axis=1)
        j = proba.argmax(axis=1)
        return self.children[j], proba[np.arange(len(j)), j]


@dataclass
class HardSteps:
    """Training records of pass one: (cell, parent, child) of every decisive step."""

    cells: list[np.ndarray] = field(default_factory=list)
    parents: list[np.ndarray] = field(default_factory=list)
    children: list[np.ndarray] = field(default_factory=list)

    def add(self, cells: np.ndarray, parents: np.ndarray, children: np.ndarray) -> None:
        self.cells.append(cells)
        self.parents.append(parents)
        self.children.append(children)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.cells:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        return (np.concatenate(self.cells), np.concatenate(self.parents),
                np.concatenate(self.children))


class StepRefiner:
    """Trained step classifiers, with their answers memoised per (parent, cell): the walks of
    one annotation (with and without the kNN neighbours) ask about the same cells."""

    def __init__(self, classifiers: dict[int, StepClassifier],
                 expression: Callable[[np.ndarray], sp.csr_matrix], n_cells: int) -> None:
        self.classifiers = classifiers
        self.expression = expression
        self.n_cells = n_cells
        self._memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __bool__(self) -> bool:
        return bool(self.classifiers)

    def predict(self, parent: int, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(child, probability) of ``parent``'s classifier for each of ``cells``."""
        if parent not in self._memo:
            self._memo[parent] = (np.full(self.n_cells, -1, dtype=np.int64),
                                  np.zeros(self.n_cells, dtype=np.float64),
                                  np.zeros(self.n_cells, dtype=bool))
        child, prob, done = self._memo[parent]
        todo = np.unique(cells[~done[cells]])
        for lo in range(0, len(todo), BLOCK):
            block = todo[lo:lo + BLOCK]
            child[block], prob[block] = self.classifiers[parent].predict(self.expression(block))
            done[block] = True
        return child[cells], prob[cells]


def decisive_matrix(P: np.ndarray) -> sp.csr_matrix:
    """Types x markers indicator of each type's decisive markers (weight >= 2)."""
    return sp.csr_matrix((P >= DECISIVE_WEIGHT).astype(np.float32))


def decisive_steps(present: sp.csr_matrix, D: sp.csr_matrix, child_mask: np.ndarray,
                   parents: np.ndarray, chosen: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Whether each step ``parents[k] -> chosen[k]`` rests on a decisive marker.

    ``present`` holds the stepping cells' expressed markers (cells x markers, > 0 where
    expressed). A step is decisive when the cell expresses a decisive marker of the chosen
    child and none of a sibling's.
    """
    out = np.zeros(len(chosen), dtype=bool)
    for lo in range(0, len(chosen), block):  # bounded dense cells x types blocks
        hi = min(lo + block, len(chosen))
        H = ((present[lo:hi] > 0).astype(np.float32) @ D.T).toarray()  # decisive hits
        own = H[np.arange(hi - lo), chosen[lo:hi]]
        siblings = (H * child_mask[parents[lo:hi]]).sum(axis=1) - own
        out[lo:hi] = (own > 0) & (siblings == 0)
    return out


@dataclass
class TrainingPlan:
    """Which decisive cells train which parent's classifier (pass one's outcome).

    ``steps`` holds, per parent type with at least two trainable children, the children and
    the training cells (child by child, in the order the classifier sees them).
    """

    steps: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def cells(self) -> np.ndarray:
        """Every training cell once, sorted (the rows to read before training)."""
        if not self.steps:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([rows for _, rows, _ in self.steps]))


def sample_keys(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per cell number (splitmix64): the training sample is
    the cells with the smallest keys, so it is the same whatever the chunking or the order
    in which chunks arrive (a uniform random sample, as drawing without replacement is)."""
    with np.errstate(over="ignore"):
        z = np.asarray(cells, dtype=np.uint64) + np.uint64((seed + 1) * 0x9E3779B97F4A7C15
                                                           % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class TrainingSample:
    """The refinement's training cells, gathered while pass one streams (no extra read).

    Per subtype step (parent, child): how many cells took it on a decisive marker, and the
    ``max_cells`` of them with the smallest :func:`sample_keys` with their expression rows.
    Chunk samples merge (:meth:`merge`) into the same sample a whole-matrix pass draws;
    memory is bounded by ``max_cells`` rows per step, not by the dataset.
    """

    def __init__(self, max_cells: int, seed: int = 0) -> None:
        self.max_cells, self.seed = max_cells, seed
        self.counts: dict[tuple[int, int], int] = {}
        self.picked: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._parts: list[tuple[np.ndarray, sp.csr_matrix]] = []  # (cells, their rows)
        self._stored = 0

    @classmethod
    def from_chunk(cls, hard: HardSteps, chunk: sp.csr_matrix, start: int, max_cells: int,
                   seed: int = 0, bounds: dict[tuple[int, int], int] | None = None,
                   ) -> TrainingSample:
        """The sample of one chunk (cells ``start ...``) from its decisive steps.

        ``bounds`` (a running sample's :meth:`bounds`) leaves out the cells that sample would
        drop anyway (their keys are above its full steps' largest), so their rows are never
        copied; the merged sample is the same.
        """
        out = cls(max_cells, seed)
        cells, parents, children = hard.arrays()
        if not len(cells):
            return out
        step = parents.astype(np.int64) << 32 | children.astype(np.int64)
        for s in np.unique(step):
            taken = cells[step == s]
            c = np.unique(taken)
            key = sample_keys(c, seed)
            p, k = int(s >> 32), int(s & 0xFFFFFFFF)
            if bounds is not None and (p, k) in bounds:
                below = key <= bounds[(p, k)]
                c, key = c[below], key[below]
            if len(c) > max_cells:
                keep = np.sort(np.argsort(key, kind="stable")[:max_cells])
                c, key = c[keep], key[keep]
            out.counts[(p, k)] = len(taken)
            out.picked[(p, k)] = (key, c)
        rows = np.unique(np.concatenate([c for _, c in out.picked.values()]))
        if len(rows):
            out._add_rows(rows, sp.csr_matrix(chunk[rows - start], dtype=np.float32))
        return out

    def _add_rows(self, cells: np.ndarray, rows: sp.csr_matrix) -> None:
        if len(cells):
            self._parts.append((cells, rows))
            self._stored += len(cells)

    def merge(self, other: TrainingSample) -> None:
        """Take in another chunk's sample (``other`` is emptied of its rows)."""
        for step, n in other.counts.items():
            self.counts[step] = self.counts.get(step, 0) + n
            key, cells = other.picked[step]
            if step in self.picked:
                k0, c0 = self.picked[step]
                key, cells = np.concatenate([k0, key]), np.concatenate([c0, cells])
                if len(cells) > self.max_cells:  # ties (never in practice) go to lower cells
                    keep = np.lexsort((cells, key))[:self.max_cells]
                    key, cells = key[keep], cells[keep]
                order = np.argsort(cells)
                key, cells = key[order], cells[order]
            self.picked[step] = (key, cells)
        for cells, rows in other._parts:
            self._add_rows(cells, rows)
        other._parts, other._stored = [], 0
        if self._stored > SLACK * max(1, len(self.cells())):  # drop rows no step keeps
            self.compact()

    def bounds(self) -> dict[tuple[int, int], int]:
        """Per full step (``max_cells`` picked), its largest kept key: a cell with a larger
        key can never enter the sample."""
        return {step: int(key.max()) for step, (key, cells) in self.picked.items()
                if len(cells) >= self.max_cells}

    def without_rows(self) -> TrainingSample:
        """This sample's counts and picked cells, without their rows (what another process
        merges before asking for the rows of the merged sample: :meth:`rows_of`)."""
        out = TrainingSample(self.max_cells, self.seed)
        out.counts, out.picked = dict(self.counts), dict(self.picked)
        return out

    def rows_of(self, cells: np.ndarray) -> list[tuple[np.ndarray, sp.csr_matrix]]:
        """The stored rows of those of ``cells`` this sample holds, as ``(cells, rows)``
        parts (sorted; a part wanted whole is not copied), for another sample's
        :meth:`attach`."""
        self.compact()  # then the parts wanted whole travel without a copy
        out = []
        for held, part in self._parts:
            keep = np.isin(held, cells)
            if keep.all():
                out.append((held, part))
            elif keep.any():
                out.append((held[keep], part[np.flatnonzero(keep)]))
        return out

    def attach(self, parts: list[tuple[np.ndarray, sp.csr_matrix]]) -> None:
        """Take in rows sent by another sample's :meth:`rows_of`."""
        for cells, rows in parts:
            self._add_rows(np.asarray(cells), rows)

    def cells(self) -> np.ndarray:
        """Every kept training cell once, sorted."""
        if not self.picked:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([c for _, c in self.picked.values()]))

    def compact(self) -> None:
        """Drop the stored rows that no step keeps."""
        need = self.cells()
        parts = self._parts
        for i, (cells, rows) in enumerate(parts):  # part by part: one copy at a time
            keep = np.isin(cells, need)
            if not keep.all():
                parts[i] = (cells[keep], rows[np.flatnonzero(keep)]) if keep.any() else None
        self._parts = [part for part in parts if part is not None]
        self._stored = sum(len(c) for c, _ in self._parts)

    def plan(self, min_cells: int = 10) -> TrainingPlan:
        """Per parent type with at least two children that have ``min_cells`` decisive cells
        each, the training cells of each child (all of them, or its ``max_cells`` sample)."""
        plan = TrainingPlan()
        for p in sorted({p for p, _ in self.counts}):
            kids = sorted(k for q, k in self.counts if q == p and
                          self.counts[(q, k)] >= min_cells)
            if len(kids) < 2:
                continue
            rows = [self.picked[(p, k)][1] for k in kids]
            y = [np.full(len(r), k, dtype=np.int64) for r, k in zip(rows, kids, strict=True)]
            plan.steps.append((p, np.concatenate(rows), np.concatenate(y)))
        return plan

    def expression(self) -> Callable[[np.ndarray], sp.csr_matrix]:
        """rows -> the kept rows of those cells (each must be kept), in that order."""
        self.compact()
        parts = list(self._parts)  # each holds other cells, sorted; no merged copy is made

        def rows(wanted: np.ndarray) -> sp.csr_matrix:
            wanted = np.asarray(wanted, dtype=np.int64)
            pieces, where = [], []
            for cells, matrix in parts:  # never empty: _add_rows and compact drop those
                pos = np.minimum(np.searchsorted(cells, wanted), len(cells) - 1)
                hit = np.flatnonzero(cells[pos] == wanted)
                if len(hit):
                    pieces.append(matrix[pos[hit]])
                    where.append(hit)
            if len(pieces) == 1 and len(where[0]) == len(wanted):
                return pieces[0]
            if sum(len(w) for w in where) != len(wanted):
                raise KeyError("training rows asked for cells the sample does not keep")
            if not pieces:
                width = parts[0][1].shape[1] if parts else 0
                return sp.csr_matrix((0, width), dtype=np.float32)
            order = np.argsort(np.concatenate(where), kind="stable")
            return sp.vstack(pieces, format="csr")[order]

        return rows


def fit_step_classifiers(
    plan: TrainingPlan,
    expression: Callable[[np.ndarray], sp.csr_matrix],
    n_genes: int,
    excluded: Callable[[int], np.ndarray],
    *,
    C: float = 1.0,
) -> dict[int, StepClassifier]:
    """One logistic-regression classifier per step of ``plan``.

    ``expression(rows)`` returns those cells' log-normalised expression (all genes);
    ``excluded(parent)`` the data columns of the children's decisive markers, which are left
    out of the features, as are genes detected in fewer than 1% of the training cells.
    """
    if not plan.steps:
        return {}
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    out: dict[int, StepClassifier] = {}
    for p, rows_all, y_all in plan.steps:
        X = expression(rows_all)
        keep = np.ones(n_genes, dtype=bool)
        keep[excluded(p)] = False
        # genes detected in at least 1% of the training cells (at least two cells)
        detected = np.asarray((X > 0).sum(axis=0)).ravel()
        keep &= detected >= max(2, int(0.01 * len(rows_all)))
        features = np.flatnonzero(keep)
        if len(features) == 0:
            continue
        model = LogisticRegression(C=C, class_weight="balanced", max_iter=1000)
        # one BLAS thread: L-BFGS's dot products split over threads round differently, and
        # the answers must not depend on the core count or the engine (Ray and local
        # workers run with one thread each)
        with threadpool_limits(limits=1):
            model.fit(X[:, features], y_all)
        out[p] = StepClassifier(np.asarray(model.classes_), features,
                                model.coef_.astype(np.float32),
                                model.intercept_.astype(np.float32))
    return out


class RowsOf:
    """rows -> the given rows of ``X`` (``cells[i]``'s row is ``X[i]``; picklable, so a worker
    process can train on them)."""

    def __init__(self, cells: np.ndarray, X: sp.csr_matrix) -> None:
        self.cells, self.X = np.asarray(cells), X

    def __call__(self, rows: np.ndarray) -> sp.csr_matrix:
        return self.X[np.searchsorted(self.cells, np.asarray(rows))]


def fit_calls(plan: TrainingPlan, expression: Callable[[np.ndarray], sp.csr_matrix],
              n_genes: int, excluded: Callable[[int], np.ndarray],
              parts: int) -> Iterator[tuple[Callable, tuple]]:
    """:func:`fit_step_classifiers` of ``plan`` as ``parts`` self-contained calls ``(fn,
    args)`` (steps split by training cells, each with its own rows), to run anywhere; the
    union of their results is the classifiers of the whole plan. Each call's rows are copied
    only when it is taken (one call's copy at a time, not every call's)."""
    groups: list[list] = [[] for _ in range(max(1, parts))]
    size = [0] * len(groups)
    for step in sorted(plan.steps, key=lambda st: -len(st[1])):
        g = size.index(min(size))
        groups[g].append(step)
        size[g] += len(step[1])
    for steps in groups:
        if not steps:
            continue
        sub = TrainingPlan(sorted(steps, key=lambda st: st[0]))
        cells = sub.cells
        rows = RowsOf(cells, expression(cells))
        gone = {p: excluded(p) for p, _, _ in sub.steps}
        yield fit_step_classifiers, (sub, rows, n_genes, gone.__getitem__)


__all__ = ["BLOCK", "DECISIVE_WEIGHT", "HardSteps", "RowsOf", "StepClassifier", "StepRefiner",
           "TrainingPlan", "TrainingSample", "decisive_matrix", "decisive_steps", "fit_calls",
           "fit_step_classifiers", "sample_keys"]
