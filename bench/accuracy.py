"""The built-in reasoner across labelled datasets, side by side with trained and published peers.

Usage::

    pip install -e ".[bench]"
    python bench/accuracy.py [--quick] [--seeds 5] [--shared ../shared] [--wheels DIR]

Datasets (real, offline): every labelled dataset in ``../shared/data`` — the CellReasoner PBMC3k
demo (``pbmc_demo.rds``, ``seurat_annotations``) and 1,000 tumour-infiltrating immune cells
(``tumour_immune_1000.h5ad``, ``cell_type_annotations``, read through
``tumour_immune_1000.truth_map.tsv``) — plus ``scanpy.datasets.pbmc68k_reduced()`` (``.raw``,
``bulk_labels``). Truth labels are read as Cell Ontology terms by the product's own reading
(:func:`cellreasoner.evaluation.truth.truth_readings`, through the truth map where there is one)
and every prediction is scored by :class:`cellreasoner.evaluation.PairScorer` (1 subtype / 0.5
major / 0.25 partial / 0).

Methods:

- the built-in reasoner through the public API (``cr.annotate``, installed code of this
  checkout): per cell (``smoothing=0``), per cell + kNN (the ``annotate`` default when the data
  has a kNN graph), per cluster and hybrid (Leiden clusters computed by ``annotate``; hybrid's
  label per cell and its cluster label). It never
  sees a label, so its answer for a held-out cell is its answer on the whole dataset.
- trained on a stratified half of the same data and evaluated on the other half (``--seeds``
  splits; every method is evaluated on the same held-out halves): SingleR (``singler``) and
  CellTypist (``celltypist.train`` with its default one-vs-rest logistic regression, restored
  for scikit-learn >= 1.8 by :class:`_OvRLogisticRegression`; then ``celltypist.annotate``'s
  steps without and with majority voting, see :func:`celltypist_annotate`). Their predictions
  are author labels and are read like the truth (the same map).
- published reference models that install offline, label-free here too: STCAT's
  CellTypist-format T-cell models (``STCAT/data/{T_cell,cd4,cd8}.pkl`` in the stcat 1.1.2 wheel)
  on the cells whose truth is a T cell, following STCAT's own steps (CD3 gate, ``T_cell.pkl``
  with majority voting, CD4/CD8 split on CD4 vs CD8A+CD8B expression, ``cd4.pkl`` /
  ``cd8.pkl`` with majority voting; STCAT's further marker-based relabelling of clusters is
  left out), and scpdac's non-malignant PDAC classifier (``scpdac/models/classifier/human/
  nonmalignant.pt`` in the scpdac 0.1.1 wheel: a torch MLP over its own gene list, missing
  genes zero-filled as scpdac does) on tumour_immune. Their labels are read with the product's
  grounding (:func:`cellreasoner.ontology.ground_labels`) and the few that it cannot read or
  misreads with :data:`PEER_LABEL_MAP`; the reading is printed.

Per dataset: mean hierarchical score (each held-out cell once, averaged over the splits that held
it out) with a paired 95% bootstrap interval (cells resampled) of the difference against the
built-in default on the same cells; the 4-level distribution, subtype-level and exact-CL-term
accuracy, the expected calibration error of the confidence against the score (10 equal-width
bins; only where the confidence is a probability; beside it the 95th percentile of the ECE
that a perfectly calibrated confidence shows on the same cells, :func:`ece_noise`) and the
median confidence of score-0 cells (pooled over the held-out halves); a coverage–accuracy
curve (mean score of the cells kept when those under a confidence threshold abstain); a
per-label table; the built-in default's most frequent answers per label. SingleR's confidence
is its delta to the next label and STCAT's the decision value of its label (its probabilities
underflow to 0 here): they rank cells but are no probabilities, so no calibration error is
shown for them.

The wheels are fetched with ``pip download --no-deps`` into ``--wheels`` when absent and
checked against :data:`WHEELS` (sha256) before anything in them is unpickled; the STCAT
pickles are read with a restricted unpickler (:class:`_ModelUnpickler`) and the scpdac
checkpoint with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import pickle
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import ROOT, table

import cellreasoner as cr
from cellreasoner.evaluation import LEVELS, PairScorer
from cellreasoner.evaluation.metrics import UNMAPPED, ground_ids
from cellreasoner.evaluation.truth import read_truth_map, scoring_text, truth_readings
from cellreasoner.ontology import get_ontology

#: The published wheels read here: file name -> sha256 of the file on PyPI.
WHEELS = {
    "stcat-1.1.2-py3-none-any.whl":
        "bb581040474d9bd02a5a59d62f83946b0c41c18b6ee4d743288f537f4d7ef8aa",
    "scpdac-0.1.1-py3-none-any.whl":
        "e8557eabb452c075730395cb93c95661777e9167fcce32e9e4c007da2afd1965",
}

#: Peer labels the product's grounding cannot read, or reads as a thymocyte stage the model
#: does not mean (STCAT's "Double Negative/Positive" are peripheral T cells lacking / bearing
#: both coreceptors): label -> CL id. Printed with every reading.
PEER_LABEL_MAP = {
    "Tgd": "CL:0000798",  # gamma-delta T cell
    "Double Negative": "CL:0000084",  # T cell
    "Double Positive": "CL:0000084",  # T cell
}

T_CELL = "CL:0000084"
STCAT_UNSPLIT = ("Double Negative", "Double Positive", "MAIT", "NKT", "Tgd")
COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.5)
DEFAULT = "builtin cell+kNN"


# ---------------------------------------------------------------------------------- datasets

@dataclass
class Dataset:
    """One labelled dataset: log-normalised X with a kNN graph, and its truth as read."""

    name: str
    adata: Any
    truth: np.ndarray
    truth_map: dict[str, str] | None
    scpdac: bool = False  # scpdac's tumour classifier applies
    readings: pd.DataFrame = field(init=False)
    truth_read: np.ndarray = field(init=False)
    truth_cl: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.readings = truth_readings(self.truth, self.truth_map)
        self.truth_read = scoring_text(self.truth, self.readings)
        cl_of = dict(zip(self.readings["truth"], self.readings["cl_id"], strict=True))
        self.truth_cl = np.array([cl_of.get(t) or UNMAPPED for t in self.truth], dtype=object)


def _bare(adata, truth_key: str, X=None):
    """A copy holding only X, var names, the truth and the kNN graph (nothing else leaks)."""
    import anndata as ad

    out = ad.AnnData(X=sp.csr_matrix(adata.X if X is None else X, dtype=np.float32),
                     obs=pd.DataFrame(index=adata.obs_names.astype(str)),
                     var=pd.DataFrame(index=adata.var_names.astype(str)))
    if "connectivities" in adata.obsp:
        out.obsp["connectivities"] = sp.csr_matrix(adata.obsp["connectivities"])
    return out, adata.obs[truth_key].astype(str).to_numpy()


def load_demo(shared: Path) -> Dataset:
    import scanpy as sc

    from cellreasoner.checks import looks_like_counts
    from cellreasoner.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read(shared / "data" / "pbmc_demo.rds")
    b = a.copy()
    if looks_like_counts(b.X, max_values=None):  # its "data" layer holds counts
        sc.pp.normalize_total(b, target_sum=1e4)
        sc.pp.log1p(b)
    sc.pp.pca(b, n_comps=10)
    sc.pp.neighbors(b, n_neighbors=5)
    adata, truth = _bare(b, "seurat_annotations")
    return Dataset("pbmc_demo (35 cells)", adata, truth, None)


def load_tumour(shared: Path) -> Dataset:
    import anndata as ad

    a = ad.read_h5ad(shared / "data" / "tumour_immune_1000.h5ad")
    adata, truth = _bare(a, "cell_type_annotations")
    tmap = read_truth_map(shared / "data" / "tumour_immune_1000.truth_map.tsv")
    return Dataset("tumour_immune_1000 (truth map)", adata, truth, tmap, scpdac=True)


def load_pbmc68k() -> Dataset:
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    raw = a.raw.to_adata()
    raw.obsp["connectivities"] = a.obsp["connectivities"]
    adata, truth = _bare(raw, "bulk_labels")
    return Dataset("pbmc68k_reduced (700 cells)", adata, truth, None)


# ----------------------------------------------------------------------------------- methods

@dataclass
class Method:
    """Predictions of one method: per split (test cells, labels, confidence), or one answer
    for every cell in ``cells`` (label-free methods; the same for every split)."""

    name: str
    labels: np.ndarray | None = None  # label-free: one per cell of ``cells``
    confidence: np.ndarray | None = None
    cells: np.ndarray | None = None  # label-free: the cells it answers (default all)
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    probability: bool = True  # the confidence is a probability (calibration error shown)
    author_vocabulary: bool = False  # predicts the dataset's own labels (read like the truth)
    seconds: float = 0.0


def builtin_methods(ds: Dataset) -> list[Method]:
    """The built-in reasoner through ``cr.annotate``: per cell, + kNN, per cluster, hybrid."""
    variants = (("builtin cell", {"backend_options": {"smoothing": 0}}),
                (DEFAULT, {}),
                ("builtin cluster", {"mode": "cluster"}),
                ("builtin hybrid", {"mode": "hybrid"}))
    out = []
    for name, kw in variants:
        t0 = time.perf_counter()
        res = cr.annotate(ds.adata.copy(), "builtin", cache=False, progress=False, **kw)
        obs = res.adata.obs
        seconds = time.perf_counter() - t0
        out.append(Method(name, obs["cellreasoner_label"].astype(str).to_numpy(),
                          obs["cellreasoner_confidence"].to_numpy(float), seconds=seconds))
        if kw.get("mode") == "hybrid":  # its per-cell label is the cell's own; and the cluster's
            out.append(Method("builtin hybrid: cluster label",
                              obs["cellreasoner_cluster_label"].astype(str).to_numpy(),
                              obs["cellreasoner_cluster_agreement"].to_numpy(float),
                              seconds=seconds))
    return out


def stratified_half(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Half of every label (at least one cell) to train on, the rest held out."""
    rng = np.random.default_rng(seed)
    train = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        train.extend(idx[: max(1, len(idx) // 2)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[train] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def singler_predict(ds: Dataset, train: np.ndarray, test: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    import singler

    X = ds.adata.X
    genes = list(ds.adata.var_names)
    res = singler.annotate_single(
        test_data=np.asarray(X[test].todense()).T, ref_data=np.asarray(X[train].todense()).T,
        ref_labels=list(ds.truth[train]), test_features=genes, ref_features=genes)
    return (np.asarray(res.column("best"), dtype=object),
            np.asarray(res.column("delta"), dtype=float))


def _query(ds: Dataset, cells: np.ndarray, X=None):
    """An AnnData of ``cells`` for CellTypist (log-normalised X, no graph: it builds its own)."""
    import anndata as ad

    return ad.AnnData(X=sp.csr_matrix(ds.adata.X[cells] if X is None else X),
                      obs=pd.DataFrame(index=ds.adata.obs_names[cells]),
                      var=pd.DataFrame(index=ds.adata.var_names))


def _label_probability(pred: pd.DataFrame, probs: pd.DataFrame, column: str) -> np.ndarray:
    """CellTypist's probability (or decision value) of the label in ``column`` (0 for labels it
    has no column for, e.g. "Heterogeneous")."""
    lab = pred[column].astype(str).to_numpy()
    cols = {c: j for j, c in enumerate(probs.columns)}
    P = probs.to_numpy()
    return np.array([P[i, cols[x]] if x in cols else 0.0 for i, x in enumerate(lab)])


def celltypist_annotate(model, q, majority_voting: bool, min_prop: float = 0.0):
    """``celltypist.annotate(q, model, majority_voting=..., min_prop=...)`` step by step, as it
    runs them, without its input guard: the guard rejects any cell with a value above 9.22,
    which 31 tumour_immune cells' log-normalised values (a 6,397-gene subset) exceed."""
    from celltypist import classifier

    clf = classifier.Classifier(filename="", model=model)  # "no input file": filled here
    clf.adata, clf.indata = q, q.X
    clf.indata_genes, clf.indata_names = q.var_names, q.obs_names
    predictions = clf.celltype()
    if not majority_voting or predictions.cell_count <= 50:  # annotate skips voting then
        return predictions
    over = clf.over_cluster()
    predictions.adata = clf.adata
    return classifier.Classifier.majority_vote(predictions, over, min_prop=min_prop)


class _OvRLogisticRegression:
    """CellTypist's classifier, ``LogisticRegression(multi_class="ovr")``, which scikit-learn
    1.8 removed (celltypist 1.7.1 still passes it): one binary logistic regression per class,
    stacked into a plain ``LogisticRegression`` so that CellTypist predicts with it as before
    (same one-vs-rest decision values). Bench only: patched into ``celltypist.train`` for the
    duration of a :func:`celltypist_train` call."""

    def __new__(cls, C: float = 1.0, solver: str | None = None, max_iter: int | None = None,
                multi_class: str = "ovr", n_jobs: int | None = None, **kwargs: Any):
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        class Fitted(LogisticRegression):
            def fit(self, X, y):
                ovr = OneVsRestClassifier(
                    LogisticRegression(C=C, solver=solver or "lbfgs", max_iter=max_iter or 1000,
                                       **kwargs), n_jobs=n_jobs).fit(X, y)
                self.classes_ = ovr.classes_
                self.coef_ = np.vstack([e.coef_ for e in ovr.estimators_])
                self.intercept_ = np.concatenate([e.intercept_ for e in ovr.estimators_])
                self.n_features_in_ = X.shape[1]
                return self

        return Fitted(C=C)


def celltypist_train(X, labels: list[str], genes: list[str]):
    """``celltypist.train`` with its defaults (one-vs-rest logistic regression, all genes)."""
    import celltypist

    module = sys.modules["celltypist.train"]  # the package's ``train`` is the function
    original = module.LogisticRegression
    module.LogisticRegression = _OvRLogisticRegression
    try:
        return celltypist.train(X, labels=labels, genes=genes, check_expression=False, n_jobs=1)
    finally:
        module.LogisticRegression = original


def celltypist_predict(ds: Dataset, train: np.ndarray, test: np.ndarray, seed: int
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CellTypist trained on ``train`` (``celltypist.train``), applied to ``test`` without and
    with majority voting (its own over-clustering of the query)."""
    np.random.seed(seed)
    model = celltypist_train(ds.adata.X[train], list(ds.truth[train]), list(ds.adata.var_names))
    res = celltypist_annotate(model, _query(ds, test), majority_voting=True)
    pred, probs = res.predicted_labels, res.probability_matrix
    out = {"CellTypist": (pred["predicted_labels"].astype(str).to_numpy(),
                          _label_probability(pred, probs, "predicted_labels"))}
    # fewer than 50 query cells: CellTypist skips the voting (and says so)
    col = "majority_voting" if "majority_voting" in pred else "predicted_labels"
    out["CellTypist+MV"] = (pred[col].astype(str).to_numpy(), _label_probability(pred, probs, col))
    return out


# ------------------------------------------------------------------------ published models

def wheel(name: str, folder: Path) -> zipfile.ZipFile:
    """The published wheel ``name`` from ``folder`` (fetched with pip when absent), checked
    against :data:`WHEELS` before anything in it is read."""
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        dist, version = name.split("-")[:2]
        subprocess.run([sys.executable, "-m", "pip", "download", f"{dist}=={version}",
                        "--no-deps", "-q", "-d", str(folder)], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WHEELS[name]:
        raise SystemExit(f"{path}: sha256 {digest} is not the published {WHEELS[name]}; "
                         "refusing to unpickle it")
    return zipfile.ZipFile(path)


class _LossStub:
    """Stands in for ``sklearn.linear_model._sgd_fast.Log``, removed from scikit-learn; an
    SGDClassifier keeps its loss object only for training, never for prediction."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:  # pickled state of the Cython class
        self.state = state


class _ModelUnpickler(pickle.Unpickler):
    """Reads a CellTypist-format model pickle: only numpy, scikit-learn and builtins classes,
    and the stub for the removed loss class (bench only; the product unpickles nothing)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "sklearn.linear_model._sgd_fast" and name == "Log":
            return _LossStub
        top = module.split(".")[0]
        if top not in ("numpy", "sklearn", "scipy") and module not in ("builtins", "copyreg",
                                                                        "collections"):
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model pickle")
        return super().find_class(module, name)


def stcat_models(folder: Path) -> dict[str, Any]:
    """STCAT's three CellTypist models (``T_cell``, ``cd4``, ``cd8``)."""
    from celltypist.models import Model

    zf = wheel("stcat-1.1.2-py3-none-any.whl", folder)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's version warnings for 1.3 pickles
        for key in ("T_cell", "cd4", "cd8"):
            obj = _ModelUnpickler(io.BytesIO(zf.read(f"STCAT/data/{key}.pkl"))).load()
            out[key] = Model(obj["Model"], obj["Scaler_"], obj["description"])
    return out


def _detected(ds: Dataset, cells: np.ndarray, genes: tuple[str, ...]) -> np.ndarray:
    """Summed expression of ``genes`` (those measured) per cell."""
    pos = [ds.adata.var_names.get_loc(g) for g in genes if g in ds.adata.var_names]
    if not pos:
        return np.zeros(len(cells))
    return np.asarray(ds.adata.X[cells][:, pos].sum(axis=1)).ravel()


def _celltypist_voted(model, q, min_prop: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Labels after majority voting and the decision value of each (STCAT's probabilities
    underflow to 0 on these cells, so the decision value is what ranks them)."""
    np.random.seed(0)  # as STCAT
    res = celltypist_annotate(model, q, majority_voting=True, min_prop=min_prop)
    pred = res.predicted_labels
    col = "majority_voting" if "majority_voting" in pred else "predicted_labels"
    lab = pred[col].astype(str).to_numpy()
    dec = _label_probability(pred, res.decision_matrix, col)
    return lab, np.where(np.isin(lab, res.decision_matrix.columns), dec, -np.inf)


def stcat_predict(ds: Dataset, models: dict[str, Any]) -> Method:
    """STCAT's steps on the cells whose truth is a T cell (see the module docstring)."""
    onto = get_ontology()
    cells = np.flatnonzero([c == T_CELL or (c != UNMAPPED and onto.is_ancestor(T_CELL, c))
                            for c in ds.truth_cl])
    t0 = time.perf_counter()
    labels = np.full(len(cells), "Unknown", dtype=object)  # STCAT's "None T"
    conf = np.full(len(cells), -np.inf)
    gate = _detected(ds, cells, ("CD3D", "CD3E", "CD3G")) > 0
    tc = cells[gate]
    lab0, p0 = _celltypist_voted(models["T_cell"], _query(ds, tc))
    out_lab, out_p = lab0.copy(), p0.copy()
    split = ~np.isin(lab0, STCAT_UNSPLIT)
    cd8 = _detected(ds, tc, ("CD8A", "CD8B")) > _detected(ds, tc, ("CD4",))
    if split.any():
        frac8 = cd8[split].mean()
        if frac8 > 0.95 or frac8 < 0.05:  # STCAT's rule for a one-sided sample
            cd8[split] = frac8 > 0.5
    for key, side, fallback in (("cd8", True, "CD8-positive, alpha-beta T cell"),
                                ("cd4", False, "CD4-positive, alpha-beta T cell")):
        m = split & (cd8 == side)
        if not m.any():
            continue
        lab, p = _celltypist_voted(models[key], _query(ds, tc[m]))
        out_lab[m] = np.where(lab == "Heterogeneous", fallback, lab)
        out_p[m] = p
    labels[gate], conf[gate] = out_lab, out_p
    return Method("STCAT", labels, conf, cells=cells, probability=False,
                  seconds=time.perf_counter() - t0)


def scpdac_predict(ds: Dataset, folder: Path) -> tuple[Method, str]:
    """scpdac's non-malignant classifier on every cell (torch MLP over its gene list)."""
    import torch
    from torch import nn

    zf = wheel("scpdac-0.1.1-py3-none-any.whl", folder)
    raw = zf.read("scpdac/models/classifier/human/nonmalignant.pt")
    # the checkpoint holds numpy scalars (its accuracy) beside tensors and lists
    with torch.serialization.safe_globals([(np._core.multiarray.scalar,
                                            "numpy.core.multiarray.scalar"), np.dtype,
                                           np.dtypes.Float64DType, np.dtypes.StrDType]):
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    genes = [str(g) for g in ckpt["genes"]]
    classes = np.array([str(c) for c in ckpt["classes"]], dtype=object)
    layers: list[nn.Module] = []
    width = len(genes)
    for h in ckpt.get("hidden", (512, 256)):
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(0.3)]
        width = h
    layers.append(nn.Linear(width, len(classes)))
    net = nn.Sequential(*layers)
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    net.eval()
    t0 = time.perf_counter()
    pos = {g: j for j, g in enumerate(ds.adata.var_names)}
    have = [i for i, g in enumerate(genes) if g in pos]
    feats = np.zeros((ds.adata.n_obs, len(genes)), dtype=np.float32)  # missing genes: 0
    feats[:, have] = ds.adata.X[:, [pos[genes[i]] for i in have]].toarray()
    with torch.no_grad():
        prob = torch.softmax(net(torch.from_numpy(feats)), dim=1).numpy()
    note = (f"scpdac: {len(have)} of its {len(genes)} genes measured here "
            f"(input layer '{ckpt.get('input_layer', '?')}'; the rest zero-filled, as scpdac does)")
    return Method("scpdac", classes[prob.argmax(1)], prob.max(1),
                  seconds=time.perf_counter() - t0), note


# ---------------------------------------------------------------------------------- scoring

def peer_readings(labels: np.ndarray) -> pd.DataFrame:
    """How a published model's labels are read: the product's grounding, then
    :data:`PEER_LABEL_MAP` (through the same function that reads truth labels)."""
    used = [x for x in pd.unique(labels) if x != "Unknown"]
    return truth_readings(used, {k: v for k, v in PEER_LABEL_MAP.items() if k in used})


@dataclass
class Scored:
    """Per-record (held-out cell, split) scores of one method, and per-cell means."""

    name: str
    idx: np.ndarray
    score: np.ndarray
    conf: np.ndarray
    exact: np.ndarray
    per_cell: np.ndarray  # mean over the splits that held the cell out; nan elsewhere
    probability: bool


def score_method(ds: Dataset, m: Method, tests: list[np.ndarray], scorer: PairScorer,
                 readings: pd.DataFrame | None) -> Scored:
    """Score ``m`` on every held-out half (label-free methods: their answer on those cells)."""
    if m.splits:
        recs = m.splits
    else:
        cells = np.arange(ds.adata.n_obs) if m.cells is None else m.cells
        where = np.full(ds.adata.n_obs, -1)
        where[cells] = np.arange(len(cells))
        recs = []
        for test in tests:
            t = test[where[test] >= 0]
            recs.append((t, m.labels[where[t]], m.confidence[where[t]]))
    idx = np.concatenate([r[0] for r in recs])
    pred = np.concatenate([np.asarray(r[1], dtype=object) for r in recs])
    conf = np.concatenate([np.asarray(r[2], dtype=float) for r in recs])
    if readings is not None:  # author vocabulary, or a published model's reading
        pred = scoring_text(pred, readings)
    score = scorer.score_many(list(ds.truth_read[idx]), list(pred))
    exact = (ground_ids(pred) == ds.truth_cl[idx]) & (ds.truth_cl[idx] != UNMAPPED)
    n = np.bincount(idx, minlength=ds.adata.n_obs)
    s = np.bincount(idx, weights=score, minlength=ds.adata.n_obs)
    per_cell = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return Scored(m.name, idx, score, conf, exact, per_cell, m.probability)


def ece(conf: np.ndarray, score: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of ``conf`` against the hierarchical ``score``."""
    b = np.minimum((np.clip(conf, 0, 1) * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.mean() * abs(conf[m].mean() - score[m].mean())
    return float(total)


def ece_noise(s: Scored, seed: int = 0, n: int = 500) -> float:
    """The 95th percentile of the calibration error that a perfectly calibrated confidence
    shows on the same cells (consistency resampling, Bröcker & Smith 2007 Weather Forecast.):
    each cell's outcome drawn as right with the probability its confidence states (one draw per
    cell, shared by the splits that held it out). An ECE below it is within sampling noise; on a
    few dozen cells that floor is high. (Right/wrong draws vary more than the 4-level score, so
    the floor leans high.)"""
    rng = np.random.default_rng(seed)
    cells, where = np.unique(s.idx, return_inverse=True)
    conf = np.clip(s.conf, 0, 1)
    sims = [ece(conf, (rng.random(len(cells))[where] < conf).astype(float)) for _ in range(n)]
    return float(np.percentile(sims, 95))


def coverage_curve(conf: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Mean score of the most confident ``c`` of the cells, for each coverage ``c``."""
    order = np.argsort(-conf, kind="stable")
    return {f"{c:.0%}": float(score[order[: max(1, int(round(c * len(score))))]].mean())
            for c in COVERAGES}


def paired_interval(diff: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boot = rng.choice(diff, (n, len(diff))).mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def f3(x: float) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.3f}"


def summary_rows(ds: Dataset, scored: list[Scored]) -> list[dict]:
    base = next(s for s in scored if s.name == DEFAULT)
    rows = []
    for s in scored:
        cells = np.isfinite(s.per_cell) & np.isfinite(base.per_cell)
        diff = s.per_cell[cells] - base.per_cell[cells]
        row = {"method": s.name, "cells": int(cells.sum()),
               "mean": f3(float(s.per_cell[cells].mean())),
               f"{DEFAULT} same cells": f3(float(base.per_cell[cells].mean()))}
        if s is base:
            row["diff [95% CI]"] = "(reference)"
        else:
            lo, hi = paired_interval(diff)
            row["diff [95% CI]"] = f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        for level in LEVELS:
            row[f"{level:g}"] = f3(float(np.mean(np.isclose(s.score, level))))
        row["exact CL"] = f3(float(s.exact.mean()))
        row["ECE"] = f3(ece(s.conf, s.score)) if s.probability else "-"
        row["ECE if calibrated (95%)"] = f3(ece_noise(s)) if s.probability else "-"
        zero = s.score == 0
        row["median conf @0"] = (f3(float(np.median(s.conf[zero]))) if zero.any() and
                                 s.probability else "-")
        rows.append(row)
    return rows


def per_label_rows(ds: Dataset, scored: list[Scored]) -> list[dict]:
    rows = []
    for lab in sorted(pd.unique(ds.truth)):
        m = ds.truth == lab
        row = {"truth": lab, "cells": int(m.sum())}
        for s in scored:
            v = s.per_cell[m]
            row[s.name] = f3(float(np.nanmean(v))) if np.isfinite(v).any() else ""
        rows.append(row)
    return rows


def top_answers(ds: Dataset, m: Method, scorer: PairScorer, top: int = 3) -> list[dict]:
    """The built-in default's most frequent answers per truth label, with their score."""
    df = pd.DataFrame({"truth": ds.truth, "read": ds.truth_read, "prediction": m.labels})
    rows = []
    for lab, grp in df.groupby("truth", sort=True):
        counts = grp["prediction"].value_counts().head(top)
        sc = scorer.score_many([grp["read"].iloc[0]] * len(counts), list(counts.index))
        rows.append({"truth": lab, "cells": len(grp), "answers (cells, score)": "; ".join(
            f"{p} ({n}, {s:g})" for (p, n), s in zip(counts.items(), sc, strict=True))})
    return rows


def reading_rows(readings: pd.DataFrame) -> list[dict]:
    return [{"label": r.truth, "cl_id": r.cl_id or "-", "cl_label": r.cl_label or "-",
             "read by": r.source} for r in readings.itertuples()]


# ------------------------------------------------------------------------------------- main

def run_dataset(ds: Dataset, args: argparse.Namespace, scorer: PairScorer,
                stcat: dict[str, Any] | None, overall: list[dict]) -> None:
    print(f"\n\n######## {ds.name}: {ds.adata.n_obs} cells x {ds.adata.n_vars} genes, "
          f"{len(pd.unique(ds.truth))} labels")
    print("\nTruth labels read as:")
    print(table(reading_rows(ds.readings), ["label", "cl_id", "cl_label", "read by"]))
    methods = builtin_methods(ds)
    tests = []
    singler_m = Method("SingleR", probability=False, author_vocabulary=True)
    ct = {k: Method(k, author_vocabulary=True) for k in ("CellTypist", "CellTypist+MV")}
    for seed in range(args.seeds):
        train, test = stratified_half(ds.truth, seed)
        tests.append(test)
        t0 = time.perf_counter()
        lab, conf = singler_predict(ds, train, test)
        singler_m.splits.append((test, lab, conf))
        singler_m.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, (lab, conf) in celltypist_predict(ds, train, test, seed).items():
                ct[k].splits.append((test, lab, conf))
        for k in ct:
            ct[k].seconds += (time.perf_counter() - t0) / len(ct)
    methods += [singler_m, *ct.values()]
    published: dict[str, pd.DataFrame] = {}
    notes = []
    if stcat is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = stcat_predict(ds, stcat)
        methods.append(m)
        published[m.name] = peer_readings(m.labels)
        builtin_t = next(x for x in methods if x.name == DEFAULT)
        notes.append(f"STCAT: the {len(m.cells)} cells whose truth is a T cell "
                     f"({int((m.labels == 'Unknown').sum())} without CD3D/E/G reads are "
                     "'None T' for STCAT and score 0); its row's diff is against "
                     f"{builtin_t.name} on the same cells")
    if args.wheels is not None and ds.scpdac:
        m, note = scpdac_predict(ds, args.wheels)
        methods.append(m)
        published[m.name] = peer_readings(m.labels)
        notes.append(note)
    if len(tests[0]) <= 50:
        notes.append("CellTypist+MV: CellTypist votes only on more than 50 query cells; "
                     f"the held-out halves have {len(tests[0])}, so it is CellTypist")
    notes.append("SingleR and CellTypist predict this dataset's labels: read like the truth")
    scored = []
    for m in methods:
        readings = (ds.readings if m.author_vocabulary else published.get(m.name))
        scored.append(score_method(ds, m, tests, scorer, readings))
    rows = summary_rows(ds, scored)
    for r, m in zip(rows, methods, strict=True):
        r["seconds"] = f"{m.seconds:.1f}"
        overall.append({"dataset": ds.name, **r})
    print(f"\nMean hierarchical score on the held-out halves ({args.seeds} stratified splits; "
          "each cell once, averaged over the splits that held it out), paired difference "
          f"against {DEFAULT} (the annotate default) on the same cells, levels, exact CL "
          "term, calibration:")
    cols = ["method", "cells", "mean", f"{DEFAULT} same cells", "diff [95% CI]", "1", "0.5",
            "0.25", "0", "exact CL", "ECE", "ECE if calibrated (95%)", "median conf @0",
            "seconds"]
    print(table(rows, cols, align="auto"))
    for note in notes:
        print(f"  note: {note}")
    print("\nCoverage-accuracy: mean score of the most confident cells when the rest abstain "
          "(pooled over the held-out halves, so 100% weights a cell by how often it was held "
          "out):")
    cov_rows = [{"method": s.name, **{k: f3(v) for k, v in coverage_curve(s.conf, s.score)
                                      .items()}} for s in scored]
    print(table(cov_rows, ["method", *(f"{c:.0%}" for c in COVERAGES)], align="auto"))
    print("\nMean score per truth label:")
    print(table(per_label_rows(ds, scored), ["truth", "cells", *(s.name for s in scored)],
                align="auto"))
    print(f"\n{DEFAULT}: most frequent answers per truth label:")
    default = next(m for m in methods if m.name == DEFAULT)
    print(table(top_answers(ds, default, scorer), ["truth", "cells", "answers (cells, score)"]))
    for name, readings in published.items():
        print(f"\n{name} labels read as:")
        print(table(reading_rows(readings), ["label", "cl_id", "cl_label", "read by"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--seeds", type=int, default=None,
                    help="stratified half/half splits (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2 splits")
    ap.add_argument("--wheels", type=Path,
                    default=Path.home() / ".cache" / "cellreasoner-bench" / "wheels",
                    help="folder with the stcat and scpdac wheels (fetched with pip when "
                         "absent)")
    ap.add_argument("--no-published", action="store_true",
                    help="leave out STCAT and scpdac (no wheels needed)")
    args = ap.parse_args()
    args.seeds = args.seeds or (2 if args.quick else 5)
    if args.no_published:
        args.wheels = None
    t_start = time.perf_counter()
    import celltypist  # noqa: F401  (its import configures the root logger at INFO)

    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("celltypist").setLevel(logging.WARNING)
    scorer = PairScorer()
    stcat = None if args.wheels is None else stcat_models(args.wheels)
    overall: list[dict] = []
    for load in (lambda: load_demo(args.shared), lambda: load_tumour(args.shared),
                 load_pbmc68k):
        run_dataset(load(), args, scorer, stcat, overall)
    print("\n\n######## All datasets: mean hierarchical score on the held-out halves, paired "
          f"difference against {DEFAULT} on the same cells")
    print(table(overall, ["dataset", "method", "cells", "mean", f"{DEFAULT} same cells",
                          "diff [95% CI]", "exact CL", "ECE", "ECE if calibrated (95%)",
                          "median conf @0"],
                 align="auto"))
    print(f"\n{args.seeds} splits; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
