"""Evaluate annotation runs against ground-truth labels (hierarchical score, accuracy, macro-F1).

One or many runs are compared side by side, like the tables of the CellReasoner paper. A run is an
annotated AnnData (in memory or ``.h5ad``), a result CSV (``cell_name``, ``response``, ``labels``,
``label``, ...), or a DataFrame; several prediction columns of one AnnData are several runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ._result import DEPRECATED_SUMMARY_ALIASES, EvaluationResult
from .metrics import (
    LEVEL_COLUMNS,
    LEVELS,
    UNMAPPED,
    collapse_to_truth,
    exact_cl_accuracy,
    ground_ids,
    level_order,
    macro_f1,
)
from .results import (
    ResultTable,
    as_text,
    prediction_column,
    provenance_for,
    read_results,
)

logger = logging.getLogger(__name__)


def _scorer(pair_table: Any, table_only: bool = False):
    from .scoring import PairScorer

    return PairScorer(pair_table=pair_table, table_only=table_only)


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


#: One run: (result table, prediction column, default run name, provenance).
_Run = tuple[ResultTable, str, str, dict[str, Any]]


def _pred_columns(pred: str | Sequence[str] | None, n_tables: int) -> list[str | None]:
    """The prediction columns asked for (``[None]``: each table's default column)."""
    preds: list[str | None]
    if pred is None:
        preds = [None]
    elif isinstance(pred, str):
        preds = [pred]
    else:
        preds = list(pred) or [None]
    if len(preds) > 1 and n_tables > 1:
        raise InputError(
            "several prediction columns (--pred) can only be compared within one result; "
            f"got {len(preds)} columns and {n_tables} results"
        )
    return preds


def _collect_runs(tables: list[ResultTable], preds: list[str | None]) -> list[_Run]:
    """Every (table, prediction column) pair, with its default name and provenance."""
    runs: list[_Run] = []
    for table in tables:
        for p in preds:
            col = prediction_column(table, p)
            if col not in table.obs.columns:
                raise InputError(
                    f"{table.source}: prediction column '{col}' not found; available columns: "
                    f"{', '.join(map(str, table.obs.columns))}"
                )
            prov = provenance_for(table, col)
            if len(preds) > 1:
                default = col
            else:
                default = str(prov.get("model") or prov.get("backend") or table.stem or col)
            runs.append((table, col, default, prov))
    return runs


def _run_names(runs: list[_Run], given_names: list | None) -> list[str]:
    """Given names, else default names told apart by mode/file when they repeat; unique."""
    if given_names is not None:
        if len(given_names) != len(runs):
            raise InputError(
                f"{len(given_names)} run names given for {len(runs)} runs; give one name per run"
            )
        run_names = [str(n) for n in given_names]
    else:
        run_names = [r[2] for r in runs]
        if len(set(run_names)) < len(run_names):  # same model twice: tell runs by mode/file
            run_names = [_distinct_name(name, prov, table) for (table, _, name, prov) in runs]
    return _unique_names(run_names)


def _truth_series(tables: list[ResultTable], truth: str) -> pd.Series:
    """The truth column of the first table that has it."""
    for table in tables:
        if truth in table.obs.columns:
            return table.obs[truth]
    cols = list(dict.fromkeys(c for t in tables for c in map(str, t.obs.columns)))
    raise InputError(
        f"truth column '{truth}' not found in {', '.join(t.source for t in tables)}; "
        f"available columns: {', '.join(cols)}"
    )


def _shared_cells(tables: list[ResultTable], truth_series: pd.Series,
                  notes: list[str]) -> pd.Index:
    """Cell names present in every table and in the truth (a note when some are dropped)."""
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
    return common


def _cells_with_truth(common: pd.Index, truth_series: pd.Series, truth: str,
                      notes: list[str]) -> tuple[pd.Index, np.ndarray]:
    """The shared cells that have a truth label, and those labels."""
    truth_text = as_text(truth_series.reindex(common))
    has_truth = truth_text != ""
    n_no_truth = int((~has_truth).sum())
    if n_no_truth:
        msg = f"{n_no_truth} cells have no ground truth in '{truth}' and were not scored"
        logger.warning(msg)
        notes.append(msg)
    cells = common[has_truth]
    if len(cells) == 0:
        raise InputError(f"truth column '{truth}' is empty for every shared cell")
    return cells, truth_text[has_truth]


def _per_cell_frame(run: _Run, name: str, cells: pd.Index, truth_text: np.ndarray,
                    truth_cl: np.ndarray, scorer: Any,
                    truth_read: np.ndarray | None = None) -> pd.DataFrame:
    """One row per cell of a run: prediction, score, level, CL ids (and confidence);
    ``truth_read`` is the truth as the scorer reads it (through a truth map)."""
    table, col = run[0], run[1]
    pred_text = as_text(table.obs[col].reindex(cells))
    scores = _score(scorer, truth_text if truth_read is None else truth_read, pred_text)
    levels = np.array([LEVELS.get(float(s), str(s)) for s in scores], dtype=object)
    frame = pd.DataFrame(
        {
            "cell": np.asarray(cells, dtype=object),
            "run": name,
            "truth": truth_text,
            "prediction": pred_text,
            "score": scores,
            "level": levels,
            "truth_cl": truth_cl,
            "pred_cl": ground_ids(pred_text),
        }
    )
    frame["exact_cl"] = (frame["truth_cl"] == frame["pred_cl"]) & (frame["truth_cl"] != UNMAPPED)
    prefix = col[: -len("label")] if col.endswith("label") else ""
    if f"{prefix}confidence" in table.obs.columns and col != "confidence":
        frame["confidence"] = pd.to_numeric(
            table.obs[f"{prefix}confidence"].reindex(cells), errors="coerce").to_numpy()
    return frame


def _scored_only(frame: pd.DataFrame, name: str, notes: list[str]) -> pd.DataFrame:
    """The cells the pair table scored, with the coverage noted."""
    scored = frame["score"].notna().to_numpy()
    missing = frame.loc[~scored, ["truth", "prediction"]].drop_duplicates()
    notes.append(f"{name}: the pair table scored {int(scored.sum())} of {len(frame)} cells "
                 f"({scored.mean():.1%}); {len(missing)} distinct (truth, prediction) pairs "
                 "are not in it and were left unscored")
    if not scored.any():
        raise InputError(f"{name}: none of its (truth, prediction) pairs is in the pair "
                         "table, so nothing can be scored with --pair-table-only; drop that "
                         "option to score the rest with the ontology rules.")
    return frame[scored]


def _summary_row(run: _Run, name: str, frame: pd.DataFrame) -> dict[str, Any]:
    """The summary metrics of one run."""
    table, col, _default, prov = run
    scores = frame["score"].to_numpy()
    truth_cl = frame["truth_cl"].to_numpy()
    pred_cl = frame["pred_cl"].to_numpy()
    row: dict[str, Any] = {
        "run": name,
        "model": prov.get("model", ""),
        "backend": prov.get("backend", ""),
        "source": table.source,
        "pred_column": col,
        "n_cells": len(frame),
        "mean_score": float(np.mean(scores)),
        "subtype_accuracy": float(np.mean(scores == 1.0)),
        "exact_cl_accuracy": exact_cl_accuracy(truth_cl, pred_cl),
        "major_accuracy": float(np.mean(scores >= 0.5)),
        "macro_f1_cl": macro_f1(truth_cl, pred_cl),
        "macro_f1_cl_hierarchical": macro_f1(truth_cl, collapse_to_truth(truth_cl, pred_cl)),
    }
    for value, colname in LEVEL_COLUMNS.items():
        row[colname] = float(np.mean(np.isclose(scores, value)))
    # deprecated alias of subtype_accuracy (the old name claimed more than score 1 means);
    # kept in memory for old scripts, never written or shown
    for old, new in DEPRECATED_SUMMARY_ALIASES.items():
        row[old] = row[new]
    return row


def _per_label_rows(name: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per truth label of a run: size, mean score, level fractions, top prediction."""
    rows = []
    for label, grp in frame.groupby("truth", sort=True):
        counts = grp["prediction"].value_counts()
        lrow: dict[str, Any] = {
            "run": name,
            "truth": label,
            "n": len(grp),
            "mean_score": float(grp["score"].mean()),
            "exact_cl_accuracy": exact_cl_accuracy(grp["truth_cl"], grp["pred_cl"]),
        }
        for value, colname in LEVEL_COLUMNS.items():
            lrow[colname] = float(np.mean(np.isclose(grp["score"], value)))
        lrow["top_prediction"] = counts.index[0]
        lrow["top_prediction_fraction"] = float(counts.iloc[0] / len(grp))
        rows.append(lrow)
    return rows


def evaluate(
    results: Any,
    truth: str,
    *,
    pred: str | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    pair_table: Any = None,
    pair_table_only: bool = False,
    truth_map: Any = None,
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
        DataFrame as accepted by :class:`cellreasoner.evaluation.PairScorer` (default ``None``).
    pair_table_only
        Score only the pairs in ``pair_table`` (the upstream notebook's semantics: exact
        match after whitespace normalisation); cells whose pair it lacks are left unscored
        (``NaN`` in ``per_cell``, outside every metric) and the coverage goes in ``notes``.
    truth_map
        How to read truth labels as Cell Ontology terms: a TSV path (columns ``truth``,
        ``cl_id``), a DataFrame or a dict (:func:`~cellreasoner.evaluation.truth.read_truth_map`);
        labels it covers are scored as their CL term, the rest through the ontology lookup.
        Every run reports each label's reading (``truth_readings``, ``notes``).

    Returns
    -------
    EvaluationResult
    """
    items, given_names = _normalise_inputs(results, names)
    if not items:
        raise InputError("no results to evaluate: give at least one AnnData, .h5ad or .csv")
    tables = [read_results(obj) for obj in items]
    runs = _collect_runs(tables, _pred_columns(pred, len(tables)))
    run_names = _run_names(runs, given_names)
    truth_series = _truth_series(tables, truth)
    notes: list[str] = [n for t in tables for n in t.notes]
    common = _shared_cells(tables, truth_series, notes)
    cells, truth_text = _cells_with_truth(common, truth_series, truth, notes)

    scorer = _scorer(pair_table, pair_table_only)
    from .truth import describe_readings, read_truth_map, scoring_text, truth_readings

    readings = truth_readings(truth_text, None if truth_map is None
                              else read_truth_map(truth_map))
    notes.extend(describe_readings(readings))
    truth_read = scoring_text(truth_text, readings)
    cl_of = dict(zip(readings["truth"], readings["cl_id"], strict=True))
    truth_cl = np.array([cl_of.get(t) or UNMAPPED for t in truth_text], dtype=object)
    summaries, per_label_rows, per_cell_frames = [], [], []
    provenance: dict[str, dict[str, Any]] = {}
    umaps: dict[str, np.ndarray] = {}
    for run, name in zip(runs, run_names, strict=True):
        table = run[0]
        frame = _per_cell_frame(run, name, cells, truth_text, truth_cl, scorer, truth_read)
        per_cell_frames.append(frame)
        if pair_table_only:
            frame = _scored_only(frame, name, notes)
        provenance[name] = run[3]
        if table.umap is not None and len(table.umap) == len(table.obs):
            umaps[name] = np.asarray(table.umap)[table.obs.index.get_indexer(cells)]
        summaries.append(_summary_row(run, name, frame))
        per_label_rows.extend(_per_label_rows(name, frame))

    return EvaluationResult(
        summary=pd.DataFrame(summaries),
        per_label=pd.DataFrame(per_label_rows),
        per_cell=pd.concat(per_cell_frames, ignore_index=True),
        truth=truth,
        notes=notes,
        provenance=provenance,
        umap=umaps,
        truth_readings=readings,
    )


def score_adata(
    adata: Any,
    truth_key: str,
    *,
    pred_key: str = "cellreasoner_label",
    key_added: str = "cellreasoner_score",
    pair_table: Any = None,
    truth_map: Any = None,
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
    truth_map
        How to read truth labels as CL terms (see :func:`evaluate`; default ``None``).
    copy
        Return a modified copy instead of writing in place (default ``False``).

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``, else ``None``. Written: ``obs[key_added]`` (the score
        1 / 0.5 / 0.25 / 0), ``obs[f"{key_added}_level"]`` (its level name) and
        ``uns[key_added]`` (truth and prediction keys, cells scored, mean score, and how the
        truth labels were read: ``truth_readings`` notes, ``truth_labels`` with their
        ``truth_cl_ids`` (``""`` when unmapped), ``unmapped_truth`` the labels without a term,
        which score 0).
    """
    if copy:
        adata = adata.copy()
    for key, what in ((truth_key, "truth"), (pred_key, "prediction")):
        if key not in adata.obs.columns:
            raise InputError(
                f"{what} column '{key}' not in adata.obs; available columns: "
                f"{', '.join(map(str, adata.obs.columns))}"
            )
    truth = as_text(adata.obs[truth_key])
    pred = as_text(adata.obs[pred_key])
    has = truth != ""
    scores = np.full(adata.n_obs, np.nan)
    from .truth import describe_readings, read_truth_map, scoring_text, truth_readings

    readings = truth_readings(truth[has], None if truth_map is None
                              else read_truth_map(truth_map))
    scores[has] = _score(_scorer(pair_table), scoring_text(truth[has], readings), pred[has])
    described = describe_readings(readings)
    if (readings["source"] == "unmapped").any():  # these score 0 against every prediction
        logger.warning(described[-1])
    adata.obs[key_added] = scores
    adata.obs[f"{key_added}_level"] = pd.Categorical(
        [LEVELS.get(float(s), "") if np.isfinite(s) else "" for s in scores],
        categories=[*level_order(), ""],
    ).remove_unused_categories()
    adata.uns[key_added] = {
        "truth_key": truth_key,
        "pred_key": pred_key,
        "n_scored": int(has.sum()),
        "mean_score": float(np.nanmean(scores)) if has.any() else float("nan"),
        "truth_readings": described,
        # parallel lists, not a dict: a label such as "NK/T" cannot be an .h5ad key
        "truth_labels": readings["truth"].tolist(),
        "truth_cl_ids": readings["cl_id"].tolist(),
        "unmapped_truth": readings.loc[readings["source"] == "unmapped", "truth"].tolist(),
    }
    return adata if copy else None
