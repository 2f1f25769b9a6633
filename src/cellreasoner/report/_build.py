"""A self-contained, offline HTML report of one annotation run.

The page holds everything inline: CSS, one script (allowed by a hash-pinned Content Security
Policy, so nothing else can run), plots as base64 PNG and the cell data as a JSON block. Model
text is only ever placed into the page with ``textContent`` by that script, and the JSON block is
escaped so that text like ``</script>`` cannot end it.

What the annotation wrote (labels, CL terms, confidence, evidence columns) is shown as written;
only what is missing is derived here (scores from ``truth``, CL terms of unmapped labels, cited
genes of a result without evidence columns; see :mod:`._evidence`).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluation import EvaluationResult, evaluate
from ..evaluation.metrics import LEVEL_COLUMNS, LEVELS, level_order
from ..evaluation.results import (
    ResultTable,
    as_text,
    column,
    field_prefix,
    prediction_column,
    provenance_for,
    read_results,
)
from ..evaluation.truth import READINGS_NOTE_PREFIX
from ..io.write import atomic_path
from ._audit import audit_section
from ._data import CellArrays, _clean, _subsample, _TextPool, cell_columns, cluster_rows
from ._evidence import cited_genes
from ._html import render

logger = logging.getLogger(__name__)

#: Cells embedded by default; larger runs are subsampled (stratified by label) for the browser.
DEFAULT_MAX_CELLS = 20000

#: Provenance fields left out of the summary (per-cluster details are in the cluster table).
_PROVENANCE_SKIP = frozenset({"clusters", "cache"})

#: Provenance fields shown first in the summary, in this order.
_PROVENANCE_ORDER = (
    "input", "model", "backend", "mode", "reasoning", "n_cells", "unique_prompts", "model_calls",
    "cache_hits", "seconds", "version", "gene_list", "sampling",
)


@dataclass
class _Run:
    """The annotation run a report shows: its table, prediction column and provenance."""

    table: ResultTable
    pred: str
    prov: dict[str, Any]
    groupby: str | None
    labels: np.ndarray

    @property
    def obs(self) -> pd.DataFrame:
        return self.table.obs

    def field(self, name: str) -> pd.Series | None:
        """The run's field ``name`` (``{key}_{name}``, else a bare ``name`` column)."""
        return column(self.obs, field_prefix(self.pred), name)


def _fig_to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _missing(table: ResultTable, what: str, name: str) -> InputError:
    return InputError(
        f"{table.source}: {what} column '{name}' not found; available columns: "
        f"{', '.join(map(str, table.obs.columns))}"
    )


def _load_run(results: Any, pred: str | None, groupby: str | None) -> _Run:
    """Read the result and settle its prediction and cluster columns."""
    table = read_results(results)
    obs = table.obs
    pred = prediction_column(table, pred)  # responses (upstream CSV) parsed into labels
    if pred not in obs.columns:
        raise _missing(table, "prediction", pred)
    prov = provenance_for(table, pred)
    if groupby is None and isinstance(prov.get("by"), str) and prov["by"] in obs.columns:
        groupby = prov["by"]  # cluster / hybrid mode: browse the clusters that were annotated
    if groupby is not None and groupby not in obs.columns:
        raise _missing(table, "groupby", groupby)
    if obs.shape[0] == 0:
        raise InputError(f"{table.source}: the result has no cells")
    return _Run(table=table, pred=pred, prov=prov, groupby=groupby, labels=as_text(obs[pred]))


def _scores(run: _Run, truth: str | None, pair_table: Any, truth_map: Any = None
            ) -> tuple[EvaluationResult | None, np.ndarray, np.ndarray]:
    """The evaluation against ``truth`` (labels read through ``truth_map``) and per-cell score
    and level (NaN / ``""`` if none)."""
    n_total = len(run.obs)
    score = np.full(n_total, np.nan)
    level = np.array([""] * n_total, dtype=object)
    if truth is None:
        return None, score, level
    ev = evaluate(run.table, truth=truth, pred=run.pred, names=[run.prov.get("model") or "run"],
                  pair_table=pair_table, truth_map=truth_map)
    pc = ev.per_cell.set_index("cell")
    pos = run.obs.index.get_indexer(pc.index)
    score[pos] = pc["score"].to_numpy(float)
    level[pos] = pc["level"].to_numpy(object)
    return ev, score, level


def _ontology_terms(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """CL ids and labels per cell: from the annotation, else mapped here."""
    onto_id, onto_label = run.field("ontology_id"), run.field("ontology_label")
    if onto_id is None:
        from ..ontology import ground_labels

        return ground_labels(run.labels)
    n_total = len(run.obs)
    onto_label_arr = as_text(onto_label) if onto_label is not None else np.full(
        n_total, "", dtype=object)
    return as_text(onto_id), onto_label_arr


def _cell_arrays(run: _Run, truth: str | None, score: np.ndarray, level: np.ndarray,
                 keep: np.ndarray) -> CellArrays:
    """Everything the page shows per cell, over all cells."""
    obs, n_total = run.obs, len(run.obs)
    onto_id, onto_label = _ontology_terms(run)
    reasoning, response = run.field("reasoning"), run.field("response")
    reasoning_arr = as_text(reasoning) if reasoning is not None else np.full(n_total, "", object)
    response_arr = as_text(response) if response is not None else np.full(n_total, "", object)
    cited_in = reasoning_arr if reasoning is not None else response_arr
    present, absent = cited_genes(run.table, run.field, cited_in, keep)
    return CellArrays(
        labels=run.labels, onto_id=onto_id, onto_label=onto_label, reasoning=reasoning_arr,
        response=response_arr, present=present, absent=absent, score=score, level=level,
        has_truth=truth is not None,
        cluster=as_text(obs[run.groupby]) if run.groupby is not None else None,
        truth=as_text(obs[truth]) if truth is not None and truth in obs.columns else None,
    )


def _page_data(run: _Run, cells: CellArrays, ev: EvaluationResult | None,
               keep: np.ndarray) -> dict[str, Any]:
    """The JSON block the page's script reads."""
    pool = _TextPool()
    columns = cell_columns(run.obs, run.field, keep, pool, cells)
    clusters_table = []
    if cells.cluster is not None:
        clusters_table = cluster_rows(cells.cluster, cells.labels, cells.score,
                                      run.field("confidence"), cells.has_truth)
    per_label: list[dict[str, Any]] = []
    level_names: list[str] = []
    if ev is not None:
        level_names = level_order()
        read_as = _reading_texts(ev.truth_readings)
        for row in ev.per_label.to_dict(orient="records"):
            entry = {k: _clean(v) for k, v in row.items() if k != "run"}
            entry["read_as"] = read_as.get(str(row["truth"]), "")
            per_label.append(entry)
    return {
        "n": len(keep),
        "n_total": len(run.obs),
        "columns": columns,
        "texts": pool.texts,
        "labels": sorted(set(columns["label"]) - {""}),
        "clusters": sorted(set(columns["cluster"]) - {""}) if "cluster" in columns else [],
        "levels": level_names,
        "clusters_table": clusters_table,
        "per_label": per_label,
        "has_score": cells.has_truth,
        "has_cluster": cells.cluster is not None,
        "groupby": run.groupby or "",
    }


def _images(run: _Run, ev: EvaluationResult | None, score: np.ndarray) -> list[tuple[str, str]]:
    """The plots, as (caption, PNG data URI)."""
    from .. import plot

    figs = [("Predicted labels", plot.label_counts(run.labels))]
    if ev is not None:
        figs.append(("Score levels", plot.level_bar(ev)))
        figs.append(("Score distribution", plot.score_violin(ev)))
        figs.append(("Truth x prediction", plot.label_heatmap(ev)))
    umap = run.table.umap
    if umap is not None and len(umap) == len(run.obs):
        figs.append(("UMAP", plot.umap_figure(
            umap, run.labels, score if ev is not None else None, pred_title=run.pred)))
    return [(name, _fig_to_data_uri(fig)) for name, fig in figs]


def _reading_texts(readings: pd.DataFrame) -> dict[str, str]:
    """Truth label -> how it was read (``"CL term (CL id[, truth map])"``, or unmapped)."""
    out = {}
    for r in readings.itertuples():
        if r.source == "unmapped":
            out[r.truth] = "unmapped: scores 0 (give a truth map)"
        else:
            out[r.truth] = (f"{r.cl_label} ({r.cl_id}"
                            f"{', truth map' if r.source == 'truth map' else ''})")
    return out


def _metrics_rows(ev: EvaluationResult | None, truth: str | None) -> list[tuple[str, str]]:
    """The metrics table (empty without ``truth``)."""
    if ev is None:
        return []
    s = ev.summary.iloc[0]
    rows = [
        ("truth column", truth),
        ("cells scored", f"{int(s['n_cells']):,}"),
        ("mean hierarchical score", f"{s['mean_score']:.3f}"),
        ("subtype-level accuracy (score 1)", f"{s['subtype_accuracy']:.3f}"),
        ("exact Cell Ontology term accuracy", f"{s['exact_cl_accuracy']:.3f}"),
        ("major-level accuracy (score \u2265 0.5)", f"{s['major_accuracy']:.3f}"),
        ("macro-F1 on Cell Ontology terms (exact)", f"{s['macro_f1_cl']:.3f}"),
        ("macro-F1 on Cell Ontology terms (more specific counts)",
         f"{s['macro_f1_cl_hierarchical']:.3f}"),
    ]
    for value, col in LEVEL_COLUMNS.items():
        rows.append((f"{LEVELS[value]} (score {value:g})", f"{s[col]:.3f}"))
    # each truth label's reading gets a row of its own (the joined note says the same)
    for label, text in _reading_texts(ev.truth_readings).items():
        rows.append((f"truth label {label!r} read as", text))
    for note in ev.notes:
        if not note.startswith(READINGS_NOTE_PREFIX):
            rows.append(("note", note))
    return rows


def _summary_rows(table: ResultTable, prov: dict[str, Any], pred: str, n_cells: int,
                  n_shown: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("source", table.source),
        ("prediction column", pred),
        ("cells", f"{n_cells:,}"),
    ]
    if n_shown < n_cells:
        rows.append(("cells in browser", f"{n_shown:,} (stratified sample by label)"))
    keys = [k for k in _PROVENANCE_ORDER if k in prov]
    keys += [k for k in prov if k not in keys]
    for key in keys:
        value = prov[key]
        if key in _PROVENANCE_SKIP:
            continue
        if isinstance(value, dict) and len(value) > 12:
            text = f"({len(value)} entries)"
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        rows.append((key.replace("_", " "), text))
    return rows


def build_report(
    results: Any,
    truth: str | None = None,
    pred: str | None = None,
    groupby: str | None = None,
    title: str | None = None,
    pair_table: Any = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    seed: int = 0,
    plots: bool = True,
    truth_map: Any = None,
) -> str:
    """The HTML text of the report (see :func:`write_report`)."""
    run = _load_run(results, pred, groupby)
    ev, score, level = _scores(run, truth, pair_table, truth_map)
    keep = _subsample(run.labels, max_cells, seed)
    cells = _cell_arrays(run, truth, score, level, keep)
    data = _page_data(run, cells, ev, keep)
    images = _images(run, ev, score) if plots else []

    from .. import __version__

    table, prov = run.table, run.prov
    title = title or f"cellreasoner report: {prov.get('model') or table.stem or 'annotation'}"
    return render(
        title=title,
        summary=_summary_rows(table, prov, run.pred, len(run.obs), len(keep)),
        metrics=_metrics_rows(ev, truth),
        images=images,
        data=data,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        audit=audit_section(run.obs, table.uns),
    )


def write_report(
    results: Any,
    path: str | Path,
    *,
    truth: str | None = None,
    pred: str | None = None,
    groupby: str | None = None,
    title: str | None = None,
    pair_table: Any = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    seed: int = 0,
    plots: bool = True,
    truth_map: Any = None,
) -> Path:
    """Write a self-contained HTML report of one annotation run.

    Parameters
    ----------
    results
        Annotated AnnData, ``.h5ad`` path, result CSV path or DataFrame.
    path
        Output ``.html`` file.
    truth
        Ground-truth column; adds metrics, per-cell scores and score plots (default ``None``).
    pred
        Prediction column (default: ``cellreasoner_label`` / ``label``).
    groupby
        Cluster column for the cluster browser (default ``None``: cells only).
    title
        Page title (default: from the model name).
    pair_table
        Judged pairs overriding the automatic scorer (default ``None``).
    max_cells
        Cells embedded in the browser; larger runs are subsampled, stratified by label
        (default 20,000). Metrics and plots always use every cell.
    seed
        Seed of that subsampling (default 0).
    plots
        Embed plots (default ``True``).
    truth_map
        How to read truth labels as Cell Ontology terms: a TSV path (``truth``, ``cl_id``), a
        DataFrame or a dict (see :func:`cellreasoner.evaluation.evaluate`; default ``None``).
        The metrics table shows each truth label's reading either way, and the unmapped ones.

    Returns
    -------
    Path
        The written file.
    """
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"report path {out}: use an .html file name")
    text = build_report(results, truth=truth, pred=pred, groupby=groupby, title=title,
                        pair_table=pair_table, max_cells=max_cells, seed=seed, plots=plots,
                        truth_map=truth_map)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
