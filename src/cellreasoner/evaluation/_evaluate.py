"""Evaluate annotation runs against ground-truth labels (hierarchical score, accuracy, macro-F1).

One or many runs are compared side by side, like the tables of the CellReasoner paper. A run is an
annotated AnnData (in memory or ``.h5ad``), a result CSV (``cell_name``, ``response``, ``labels``,
``label``, ...), or a DataFrame; several prediction columns of one AnnData are several runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

logger = logging.getLogger(__name__)

#: Default prediction column of an annotated AnnData and of a result CSV, tried in this order.
DEFAULT_PRED_COLUMNS = ("cellreasoner_label", "label")
#: Class name given to labels that do not map to a Cell Ontology term (macro-F1).
UNMAPPED = "unmapped"

#: Level columns of the summary, from the score they count (1 / .5 / .25 / 0).
LEVEL_COLUMNS = {
    1.0: "subtype_correct",
    0.5: "major_correct",
    0.25: "partially_correct",
    0.0: "incorrect",
}


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------


@dataclass
class ResultTable:
    """One loaded result source: cell table, unstructured metadata and (optionally) a UMAP.

    Attributes
    ----------
    obs
        Per-cell table indexed by cell name (``adata.obs`` or the CSV with ``cell_name`` as index).
    uns
        ``adata.uns`` (empty for CSV / DataFrame input).
    source
        Where it came from, for messages (file path or ``"<AnnData>"``).
    stem
        File stem used as a fallback run name (``None`` for in-memory input).
    umap
        ``obsm["X_umap"]`` when present, else ``None``.
    adata
        The AnnData itself when it was given in memory, else ``None``.
    """

    obs: pd.DataFrame
    uns: dict[str, Any]
    source: str
    stem: str | None = None
    umap: np.ndarray | None = None
    adata: Any = None


def _frame_from_table(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Index a CSV-like table on ``cell_name`` (kept as-is when there is no such column)."""
    df = df.copy()
    if "cell_name" in df.columns:
        df.index = df["cell_name"].astype(str)
    else:
        df.index = df.index.astype(str)
    df.index.name = None
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()][:3].tolist()
        raise InputError(
            f"{source}: cell names are not unique (e.g. {dup}); each row must be one cell "
            "with a unique 'cell_name'"
        )
    return df


def _read_h5ad_light(path: Path) -> ResultTable:
    """Read obs, uns and ``obsm['X_umap']`` of an ``.h5ad`` without loading the matrix."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            if "obs" not in f:
                raise InputError(f"{path}: not an AnnData .h5ad file (no 'obs' group)")
            obs = read_elem(f["obs"])
            uns = read_elem(f["uns"]) if "uns" in f else {}
            umap = None
            if "obsm" in f and "X_umap" in f["obsm"]:
                umap = np.asarray(read_elem(f["obsm"]["X_umap"]))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read as .h5ad ({exc})") from exc
    obs.index = obs.index.astype(str)
    return ResultTable(obs=obs, uns=dict(uns), source=str(path), stem=path.stem, umap=umap)


def read_results(obj: Any) -> ResultTable:
    """Load one result source.

    Parameters
    ----------
    obj
        An AnnData, a DataFrame, or a path to an ``.h5ad`` or ``.csv``/``.tsv`` file.

    Returns
    -------
    ResultTable
    """
    import anndata

    if isinstance(obj, ResultTable):
        return obj
    if isinstance(obj, anndata.AnnData):
        obs = obj.obs.copy()
        obs.index = obs.index.astype(str)
        umap = np.asarray(obj.obsm["X_umap"]) if "X_umap" in obj.obsm else None
        return ResultTable(obs=obs, uns=dict(obj.uns), source="<AnnData>", umap=umap, adata=obj)
    if isinstance(obj, pd.DataFrame):
        return ResultTable(obs=_frame_from_table(obj, "<DataFrame>"), uns={}, source="<DataFrame>")
    if isinstance(obj, str | Path):
        path = Path(obj)
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected an annotated .h5ad or a result CSV)")
        suffix = path.suffix.lower()
        if suffix == ".h5ad":
            return _read_h5ad_light(path)
        if suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix == ".tsv" else ","
            try:
                df = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""])
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: cannot be parsed as a result table ({exc})") from exc
            return ResultTable(obs=_frame_from_table(df, str(path)), uns={}, source=str(path),
                               stem=path.stem)
        raise InputError(
            f"{path}: unsupported file type '{suffix}'; give an annotated .h5ad or a result .csv"
        )
    raise InputError(
        f"cannot evaluate an object of type {type(obj).__name__}; give an AnnData, a DataFrame "
        "or a path to an .h5ad / .csv file"
    )


def default_pred_column(table: ResultTable) -> str:
    """Find the prediction column of a result table.

    Tries ``cellreasoner_label`` and ``label``, then a single ``<key>_label`` column that has a
    matching ``<key>_confidence`` column (annotations written with another ``key_added``).
    """
    cols = list(table.obs.columns)
    for name in DEFAULT_PRED_COLUMNS:
        if name in cols:
            return name
    candidates = [c for c in cols if c.endswith("_label") and f"{c[:-6]}_confidence" in cols]
    if len(candidates) == 1:
        return candidates[0]
    raise InputError(
        f"{table.source}: no prediction column found (looked for "
        f"{', '.join(DEFAULT_PRED_COLUMNS)}); pass pred=/--pred with one of: {', '.join(cols)}"
    )


def provenance_for(table: ResultTable, pred: str) -> dict[str, Any]:
    """Provenance dict of the annotation run that wrote ``pred`` (``{}`` when unknown)."""
    keys = []
    if pred.endswith("_label"):
        keys.append(pred[: -len("_label")])
    if pred in DEFAULT_PRED_COLUMNS:
        keys.append("cellreasoner")
    for key in keys:
        value = table.uns.get(key)
        if isinstance(value, Mapping) and ("model" in value or "backend" in value):
            return dict(value)
    return {}


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _as_text(values: Sequence[Any] | pd.Series) -> np.ndarray:
    """Labels as stripped strings; missing values become ``""``."""
    s = pd.Series(values, dtype=object)
    s = s.where(s.notna(), "")
    return s.astype(str).str.strip().to_numpy(dtype=object)


def _scorer(pair_table: Any):
    from .scoring import PairScorer

    return PairScorer(pair_table=pair_table)


def _score(scorer: Any, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Score every (truth, pred) pair, scoring each distinct pair once."""
    if len(truth) == 0:
        return np.zeros(0, dtype=float)
    pairs = pd.MultiIndex.from_arrays([truth, pred])
    codes, uniq = pd.factorize(pairs)
    ut = np.asarray([p[0] for p in uniq], dtype=object)
    up = np.asarray([p[1] for p in uniq], dtype=object)
    uscores = np.asarray(scorer.score_many(list(ut), list(up)), dtype=float)
    return uscores[codes]


class _OntologyCache:
    """Memoised ``map_label`` (label text -> CL id, or :data:`UNMAPPED`)."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._labels: dict[str, str] = {}

    def __call__(self, texts: np.ndarray) -> np.ndarray:
        from ..ontology import map_label

        out = np.empty(len(texts), dtype=object)
        for i, text in enumerate(texts):
            if text not in self._ids:
                match = map_label(text) if text else None
                cl_id = getattr(match, "id", None) if match is not None else None
                self._ids[text] = cl_id or UNMAPPED
                self._labels[text] = (getattr(match, "label", "") or "") if cl_id else ""
            out[i] = self._ids[text]
        return out

    def label_of(self, text: str) -> str:
        """CL label of a text already mapped (``""`` when unmapped)."""
        return self._labels.get(text, "")


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


def collapse_to_truth(truth_cl: Sequence[str], pred_cl: Sequence[str]) -> np.ndarray:
    """Predicted CL ids, with a prediction at or below the truth's term replaced by that term.

    A more specific correct answer (``"CD8-positive, alpha-beta T cell"`` for truth
    ``"T cell"``) then counts as a hit in :func:`macro_f1`; anything else is left as predicted.
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


def _level_names() -> dict[float, str]:
    from .scoring import LEVELS

    return {float(k): str(v) for k, v in LEVELS.items()}


@dataclass
class EvaluationResult:
    """Metrics of one or more runs.

    Attributes
    ----------
    summary
        One row per run: ``run``, ``model``, ``backend``, ``source``, ``pred_column``,
        ``n_cells``, ``mean_score``, ``exact_accuracy`` (score 1), ``major_accuracy``
        (score >= 0.5), ``macro_f1_cl`` (exact CL terms), ``macro_f1_cl_hierarchical`` (a
        prediction at or below the truth's CL term counts as it; see :func:`collapse_to_truth`)
        and the fraction of cells at each level
        (``subtype_correct``, ``major_correct``, ``partially_correct``, ``incorrect``).
    per_label
        One row per (run, truth label): ``n``, ``mean_score``, level fractions,
        ``top_prediction`` and ``top_prediction_fraction``.
    per_cell
        Long table, one row per (run, cell): ``cell``, ``run``, ``truth``, ``prediction``,
        ``score``, ``level``, ``truth_cl``, ``pred_cl`` (and ``confidence`` when the run has it).
    truth
        Name of the ground-truth column.
    notes
        Human-readable remarks (dropped cells, cells without truth).
    provenance
        Run name -> provenance dict from ``uns`` (``{}`` when unknown).
    umap
        Run name -> UMAP coordinates of its scored cells, in ``per_cell`` order (only runs whose
        source has ``obsm["X_umap"]``).
    """

    summary: pd.DataFrame
    per_label: pd.DataFrame
    per_cell: pd.DataFrame
    truth: str
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    umap: dict[str, np.ndarray] = field(default_factory=dict)

    def __repr__(self) -> str:
        cols = ["run", "n_cells", "mean_score", "exact_accuracy", "major_accuracy", "macro_f1_cl",
                "macro_f1_cl_hierarchical"]
        return (f"EvaluationResult(truth={self.truth!r}, runs={len(self.summary)})\n"
                + self.summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    @property
    def runs(self) -> list[str]:
        """Run names, in input order."""
        return self.summary["run"].tolist()

    def to_dir(self, path: str | Path, plots: bool = True, fmt: str = "png") -> Path:
        """Write ``metrics.csv``, ``per_label.csv``, ``scores.csv`` and (default) plots.

        Parameters
        ----------
        path
            Output folder (created if needed).
        plots
            Also write ``score_violin``, ``score_levels``, one ``heatmap_<run>`` figure and,
            for runs with a UMAP, ``umap_<run>`` (default ``True``).
        fmt
            Figure format, ``"png"`` (default), ``"pdf"`` or ``"svg"``.

        Returns
        -------
        Path
            The output folder.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.summary.to_csv(out / "metrics.csv", index=False)
        self.per_label.to_csv(out / "per_label.csv", index=False)
        self.per_cell.to_csv(out / "scores.csv", index=False)
        if plots:
            from .. import plot

            figs = [
                (plot.score_violin(self), "score_violin"),
                (plot.level_bar(self), "score_levels"),
            ]
            for run in self.runs:
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run)
                figs.append((plot.label_heatmap(self, run=run), f"heatmap_{safe}"))
                if run in self.umap:
                    sub = self.per_cell[self.per_cell["run"] == run]
                    figs.append((plot.umap_figure(self.umap[run], sub["prediction"],
                                                  sub["score"], pred_title=run), f"umap_{safe}"))
            for fig, stem in figs:
                fig.savefig(out / f"{stem}.{fmt}", bbox_inches="tight", dpi=120)
        return out


def _distinct_name(name: str, prov: dict[str, Any], table: ResultTable) -> str:
    """``name`` qualified by the run's mode (when not per cell) and its file stem."""
    parts = [name]
    if prov.get("mode") and prov.get("mode") != "cell":
        parts.append(str(prov["mode"]))
    if table.stem:
        parts.append(str(table.stem))
    return " / ".join(parts)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 1
            out.append(n)
    return out


def _normalise_inputs(results: Any, names: Sequence[str] | None) -> tuple[list[Any], list | None]:
    import anndata

    if isinstance(results, Mapping):
        if names is not None:
            raise InputError("give run names either as the keys of results or as names=, not both")
        return list(results.values()), [str(k) for k in results]
    if isinstance(results, str | Path | pd.DataFrame | anndata.AnnData | ResultTable):
        return [results], list(names) if names is not None else None
    return list(results), list(names) if names is not None else None


def evaluate(
    results: Any,
    truth: str,
    pred: str | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    pair_table: Any = None,
) -> EvaluationResult:
    """Score one or many annotation runs against ground truth.

    Parameters
    ----------
    results
        One result (AnnData, DataFrame, ``.h5ad``/``.csv`` path), a list of them, or a dict
        ``{name: result}``.
    truth
        Ground-truth column. It must exist in at least one run; runs without it take it from the
        others (matched by cell name).
    pred
        Prediction column(s). ``None`` (default) picks ``cellreasoner_label`` (AnnData) or
        ``label`` (CSV) in each run. Several columns with a single result compare them as runs.
    names
        Run names; default: ``uns[...]["model"]`` (else the backend, else the file stem, else the
        prediction column); the column name when several ``pred`` columns are compared.
    pair_table
        Judged (truth, prediction) pairs that override the automatic scorer: a CSV path or a
        DataFrame as accepted by :class:`cellreasoner.scoring.PairScorer` (default ``None``).

    Returns
    -------
    EvaluationResult
    """
    items, given_names = _normalise_inputs(results, names)
    if not items:
        raise InputError("no results to evaluate: give at least one AnnData, .h5ad or .csv")
    tables = [read_results(obj) for obj in items]

    preds: list[str | None]
    if pred is None:
        preds = [None]
    elif isinstance(pred, str):
        preds = [pred]
    else:
        preds = list(pred)
        if not preds:
            preds = [None]
    if len(preds) > 1 and len(tables) > 1:
        raise InputError(
            "several prediction columns (--pred) can only be compared within one result; "
            f"got {len(preds)} columns and {len(tables)} results"
        )

    # (table, pred column, default name) for every run
    runs: list[tuple[ResultTable, str, str, dict[str, Any]]] = []
    for table in tables:
        for p in preds:
            col = p if p is not None else default_pred_column(table)
            if col not in table.obs.columns:
                raise InputError(
                    f"{table.source}: prediction column '{col}' not found; available columns: "
                    f"{', '.join(map(str, table.obs.columns))}"
                )
            prov = provenance_for(table, col)
            if len(preds) > 1:
                default = col
            else:
                default = str(
                    prov.get("model") or prov.get("backend") or table.stem or col
                )
            runs.append((table, col, default, prov))

    if given_names is not None:
        if len(given_names) != len(runs):
            raise InputError(
                f"{len(given_names)} run names given for {len(runs)} runs; give one name per run"
            )
        run_names = [str(n) for n in given_names]
    else:
        run_names = [r[2] for r in runs]
        if len(set(run_names)) < len(run_names):  # same model twice: tell runs by mode/file
            run_names = [_distinct_name(name, prov, table)
                         for (table, _, name, prov) in runs]
    run_names = _unique_names(run_names)

    # truth: first table having the column
    truth_series = None
    for table in tables:
        if truth in table.obs.columns:
            truth_series = table.obs[truth] if truth_series is None else truth_series
    if truth_series is None:
        cols = list(dict.fromkeys(c for t in tables for c in map(str, t.obs.columns)))
        raise InputError(
            f"truth column '{truth}' not found in {', '.join(t.source for t in tables)}; "
            f"available columns: {', '.join(cols)}"
        )

    notes: list[str] = []
    # align on cell names
    common = pd.Index(tables[0].obs.index)
    for table in tables[1:]:
        common = common[common.isin(table.obs.index)]
    common = common[common.isin(truth_series.index)]
    union = set()
    for table in tables:
        union.update(table.obs.index)
    n_dropped = len(union) - len(common)
    if len(common) == 0:
        raise InputError(
            "the results share no cell names, so they cannot be compared; check that they "
            "annotate the same cells (obs_names / 'cell_name')"
        )
    if n_dropped:
        detail = ", ".join(
            f"{t.source}: {int((~t.obs.index.isin(common)).sum())}" for t in tables
        )
        msg = (f"aligned runs on {len(common)} shared cells; dropped {n_dropped} cells not "
               f"present in every run ({detail})")
        logger.warning(msg)
        notes.append(msg)

    truth_text = _as_text(truth_series.reindex(common))
    has_truth = truth_text != ""
    n_no_truth = int((~has_truth).sum())
    if n_no_truth:
        msg = f"{n_no_truth} cells have no ground truth in '{truth}' and were not scored"
        logger.warning(msg)
        notes.append(msg)
    cells = common[has_truth]
    truth_text = truth_text[has_truth]
    if len(cells) == 0:
        raise InputError(f"truth column '{truth}' is empty for every shared cell")

    level_names = _level_names()
    scorer = _scorer(pair_table)
    ontology = _OntologyCache()
    truth_cl = ontology(truth_text)

    summaries, per_label_rows, per_cell_frames = [], [], []
    provenance: dict[str, dict[str, Any]] = {}
    umaps: dict[str, np.ndarray] = {}
    for (table, col, _default, prov), name in zip(runs, run_names, strict=True):
        pred_text = _as_text(table.obs[col].reindex(cells))
        scores = _score(scorer, truth_text, pred_text)
        pred_cl = ontology(pred_text)
        levels = np.array([level_names.get(float(s), str(s)) for s in scores], dtype=object)
        frame = pd.DataFrame(
            {
                "cell": np.asarray(cells, dtype=object),
                "run": name,
                "truth": truth_text,
                "prediction": pred_text,
                "score": scores,
                "level": levels,
                "truth_cl": truth_cl,
                "pred_cl": pred_cl,
            }
        )
        prefix = col[: -len("label")] if col.endswith("label") else ""
        if f"{prefix}confidence" in table.obs.columns and col != "confidence":
            frame["confidence"] = pd.to_numeric(
                table.obs[f"{prefix}confidence"].reindex(cells), errors="coerce").to_numpy()
        per_cell_frames.append(frame)
        provenance[name] = prov
        if table.umap is not None and len(table.umap) == len(table.obs):
            umaps[name] = np.asarray(table.umap)[table.obs.index.get_indexer(cells)]
        row: dict[str, Any] = {
            "run": name,
            "model": prov.get("model", ""),
            "backend": prov.get("backend", ""),
            "source": table.source,
            "pred_column": col,
            "n_cells": len(cells),
            "mean_score": float(np.mean(scores)),
            "exact_accuracy": float(np.mean(scores == 1.0)),
            "major_accuracy": float(np.mean(scores >= 0.5)),
            "macro_f1_cl": macro_f1(truth_cl, pred_cl),
            "macro_f1_cl_hierarchical": macro_f1(truth_cl, collapse_to_truth(truth_cl, pred_cl)),
        }
        for value, colname in LEVEL_COLUMNS.items():
            row[colname] = float(np.mean(np.isclose(scores, value)))
        summaries.append(row)

        for label, grp in frame.groupby("truth", sort=True):
            counts = grp["prediction"].value_counts()
            lrow: dict[str, Any] = {
                "run": name,
                "truth": label,
                "n": len(grp),
                "mean_score": float(grp["score"].mean()),
            }
            for value, colname in LEVEL_COLUMNS.items():
                lrow[colname] = float(np.mean(np.isclose(grp["score"], value)))
            lrow["top_prediction"] = counts.index[0]
            lrow["top_prediction_fraction"] = float(counts.iloc[0] / len(grp))
            per_label_rows.append(lrow)

    return EvaluationResult(
        summary=pd.DataFrame(summaries),
        per_label=pd.DataFrame(per_label_rows),
        per_cell=pd.concat(per_cell_frames, ignore_index=True),
        truth=truth,
        notes=notes,
        provenance=provenance,
        umap=umaps,
    )


def score_adata(
    adata: Any,
    truth_key: str,
    pred_key: str = "cellreasoner_label",
    key_added: str = "cellreasoner_score",
    pair_table: Any = None,
    copy: bool = False,
) -> Any:
    """Write per-cell hierarchical scores of a prediction column into ``adata.obs``.

    Parameters
    ----------
    adata
        Annotated data.
    truth_key
        Ground-truth column of ``adata.obs``.
    pred_key
        Prediction column (default ``"cellreasoner_label"``).
    key_added
        Score column to write (default ``"cellreasoner_score"``); the level name goes to
        ``f"{key_added}_level"`` and a summary to ``adata.uns[key_added]``.
    pair_table
        Judged pairs overriding the automatic scorer (default ``None``).
    copy
        Return a modified copy instead of writing in place (default ``False``).

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, else ``None``.
    """
    if copy:
        adata = adata.copy()
    for key, what in ((truth_key, "truth"), (pred_key, "prediction")):
        if key not in adata.obs.columns:
            raise InputError(
                f"{what} column '{key}' not in adata.obs; available columns: "
                f"{', '.join(map(str, adata.obs.columns))}"
            )
    truth = _as_text(adata.obs[truth_key])
    pred = _as_text(adata.obs[pred_key])
    has = truth != ""
    scores = np.full(adata.n_obs, np.nan)
    scores[has] = _score(_scorer(pair_table), truth[has], pred[has])
    names = _level_names()
    adata.obs[key_added] = scores
    adata.obs[f"{key_added}_level"] = pd.Categorical(
        [names.get(float(s), "") if np.isfinite(s) else "" for s in scores],
        categories=[names[k] for k in sorted(names, reverse=True)] + [""],
    ).remove_unused_categories()
    adata.uns[key_added] = {
        "truth_key": truth_key,
        "pred_key": pred_key,
        "n_scored": int(has.sum()),
        "mean_score": float(np.nanmean(scores)) if has.any() else float("nan"),
    }
    return adata if copy else None
