"""A self-contained, offline HTML report of one annotation run.

The page holds everything inline: CSS, one script (allowed by a hash-pinned Content Security
Policy, so nothing else can run), plots as base64 PNG and the cell data as a JSON block. Model
text is only ever placed into the page with ``textContent`` by that script, and the JSON block is
escaped so that text like ``</script>`` cannot end it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..evaluation import evaluate
from ..evaluation.metrics import LEVEL_COLUMNS
from ..evaluation.results import ResultTable, default_pred_column, provenance_for, read_results
from ..evaluation.results import as_text as _as_text

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


def _json_for_script(obj: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u003c``/``\\u003e``/``\\u0026`` (so ``</script>`` or
    ``<!--`` in model text cannot end the block), as do U+2028/U+2029.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _clean(value: Any) -> Any:
    """A JSON-able scalar: NaN/None -> None, numpy scalars -> Python."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _float_list(values: Any) -> list[float | None]:
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return [None if not math.isfinite(v) else round(float(v), 4) for v in arr]


def _gene_lists(values: Any) -> list[list[str]]:
    out = []
    for v in _as_text(values):
        out.append([g.strip() for g in str(v).split(",") if g.strip()])
    return out


def _bool_list(values: Any) -> list[bool | None]:
    out: list[bool | None] = []
    for v in pd.Series(values, dtype=object):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, str):
            out.append(v.strip().lower() in ("true", "1", "yes"))
        else:
            out.append(bool(v))
    return out


def _fig_to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _subsample(labels: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_cells`` cells, stratified by label (>= 1 per label)."""
    n = len(labels)
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    codes, uniq = pd.factorize(pd.Series(labels, dtype=object))
    keep = []
    for c in range(len(uniq)):
        idx = np.flatnonzero(codes == c)
        k = max(1, int(round(len(idx) * max_cells / n)))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    out = np.sort(np.concatenate(keep))
    if len(out) > max_cells:
        out = np.sort(rng.choice(out, size=max_cells, replace=False))
    return out


def _column(obs: pd.DataFrame, prefix: str, name: str) -> pd.Series | None:
    for col in (f"{prefix}{name}", name):
        if col in obs.columns:
            return obs[col]
    return None


def _expressed_genes(matrix: Any, var_names: Sequence[str], i: int) -> list[str]:
    """Genes with a positive value in row ``i`` of a dense or sparse matrix."""
    import scipy.sparse as sp

    row = matrix[i]
    if sp.issparse(row):
        row = row.tocsr()
        idx = row.indices[row.data > 0]
    else:
        idx = np.flatnonzero(np.asarray(row).ravel() > 0)
    return [str(var_names[j]) for j in idx]


def _evidence_from_expression(
    table: ResultTable, reasoning: np.ndarray, keep: np.ndarray
) -> tuple[list[list[str]], list[list[str]]] | None:
    """Cited genes present/absent per cell, computed with :mod:`cellreasoner.evidence`.

    Used when the result has no ``cited_present``/``cited_absent`` columns but the expression is
    at hand (AnnData in memory or an ``.h5ad``); ``.raw`` is used when present (``X`` may be
    scaled). Genes are recognised from the measured genes (``var_names``), so "absent" means
    measured but zero in that cell. Only the cells in ``keep`` with reasoning are checked;
    ``None`` when not possible.
    """
    if not any(reasoning[i] for i in keep):
        return None
    from ..evidence import check_evidence_many

    adata = table.adata
    if adata is None and table.source.lower().endswith(".h5ad"):
        import anndata

        adata = anndata.read_h5ad(table.source)
    if adata is None:
        return None
    src = adata.raw if adata.raw is not None else adata
    matrix, var_names = src.X, src.var_names
    n = len(reasoning)
    present: list[list[str]] = [[] for _ in range(n)]
    absent: list[list[str]] = [[] for _ in range(n)]
    rows = [int(i) for i in keep if reasoning[i]]
    checked = check_evidence_many(
        [str(reasoning[i]) for i in rows],
        [_expressed_genes(matrix, var_names, i) for i in rows],
        vocabulary=[str(g) for g in var_names],
    )
    for i, p, a in zip(rows, checked["present"], checked["absent"], strict=True):
        present[i] = [g.strip() for g in str(p).split(",") if g.strip()]
        absent[i] = [g.strip() for g in str(a).split(",") if g.strip()]
    return present, absent


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
) -> str:
    """The HTML text of the report (see :func:`write_report`)."""
    table = read_results(results)
    obs = table.obs
    pred = pred or default_pred_column(table)
    if pred not in obs.columns:
        raise InputError(
            f"{table.source}: prediction column '{pred}' not found; available columns: "
            f"{', '.join(map(str, obs.columns))}"
        )
    prov = provenance_for(table, pred)
    if groupby is None and isinstance(prov.get("by"), str) and prov["by"] in obs.columns:
        groupby = prov["by"]  # cluster / hybrid mode: browse the clusters that were annotated
    if groupby is not None and groupby not in obs.columns:
        raise InputError(
            f"{table.source}: groupby column '{groupby}' not found; available columns: "
            f"{', '.join(map(str, obs.columns))}"
        )
    prefix = pred[: -len("label")] if pred.endswith("label") else ""
    n_total = obs.shape[0]
    if n_total == 0:
        raise InputError(f"{table.source}: the result has no cells")
    labels = _as_text(obs[pred])

    # metrics and per-cell scores
    ev = None
    score = np.full(n_total, np.nan)
    level = np.array([""] * n_total, dtype=object)
    if truth is not None:
        ev = evaluate(table, truth=truth, pred=pred, names=[prov.get("model") or "run"],
                      pair_table=pair_table)
        pc = ev.per_cell.set_index("cell")
        pos = obs.index.get_indexer(pc.index)
        score[pos] = pc["score"].to_numpy(float)
        level[pos] = pc["level"].to_numpy(object)

    # ontology terms: from the annotation, else mapped here
    onto_id = _column(obs, prefix, "ontology_id")
    onto_label = _column(obs, prefix, "ontology_label")
    if onto_id is None:
        from ..evaluation.metrics import UNMAPPED, OntologyCache

        cache = OntologyCache()
        ids = cache(labels)
        onto_id_arr = np.where(ids == UNMAPPED, "", ids).astype(object)
        onto_label_arr = np.array([cache.label_of(t) for t in labels], dtype=object)
    else:
        onto_id_arr = _as_text(onto_id)
        onto_label_arr = _as_text(onto_label) if onto_label is not None else np.full(
            n_total, "", dtype=object)

    reasoning = _column(obs, prefix, "reasoning")
    response = _column(obs, prefix, "response")
    reasoning_arr = _as_text(reasoning) if reasoning is not None else np.full(n_total, "", object)
    response_arr = _as_text(response) if response is not None else np.full(n_total, "", object)
    present_col = _column(obs, prefix, "cited_present")
    absent_col = _column(obs, prefix, "cited_absent")
    keep = _subsample(labels, max_cells, seed)
    if present_col is not None or absent_col is not None:
        present = _gene_lists(present_col) if present_col is not None else [[]] * n_total
        absent = _gene_lists(absent_col) if absent_col is not None else [[]] * n_total
    else:
        text_for_evidence = reasoning_arr if reasoning is not None else response_arr
        computed = _evidence_from_expression(table, text_for_evidence, keep)
        present, absent = computed if computed is not None else ([[]] * n_total, [[]] * n_total)

    # deduplicated long texts (cluster mode repeats one reasoning per cluster)
    texts: list[str] = []
    text_index: dict[str, int] = {}

    def ref(text: str) -> int:
        if text not in text_index:
            text_index[text] = len(texts)
            texts.append(text)
        return text_index[text]

    conf = _column(obs, prefix, "confidence")
    evfrac = _column(obs, prefix, "evidence_fraction")
    evflag = _column(obs, prefix, "evidence_flag")
    cluster_label = _column(obs, prefix, "cluster_label")
    cluster_vals = _as_text(obs[groupby]) if groupby is not None else None
    truth_vals = _as_text(obs[truth]) if truth is not None and truth in obs.columns else None

    columns: dict[str, list[Any]] = {
        "cell": [str(c) for c in obs.index[keep]],
        "label": [str(x) for x in labels[keep]],
        "ontology_id": [str(x) for x in onto_id_arr[keep]],
        "ontology_label": [str(x) for x in onto_label_arr[keep]],
        "reasoning": [ref(str(x)) for x in reasoning_arr[keep]],
        "response": [ref(str(x)) for x in response_arr[keep]],
        "present": [present[i] for i in keep],
        "absent": [absent[i] for i in keep],
    }
    if conf is not None:
        columns["confidence"] = _float_list(conf.to_numpy()[keep])
    if evfrac is not None:
        columns["evidence_fraction"] = _float_list(evfrac.to_numpy()[keep])
    if evflag is not None:
        columns["evidence_flag"] = _bool_list(evflag.to_numpy()[keep])
    if cluster_label is not None:
        columns["cluster_label"] = [str(x) for x in _as_text(cluster_label)[keep]]
    agreement = _column(obs, prefix, "cluster_agreement")
    if agreement is not None:
        columns["cluster_agreement"] = _float_list(agreement.to_numpy()[keep])
    if cluster_vals is not None:
        columns["cluster"] = [str(x) for x in cluster_vals[keep]]
    if truth is not None:
        columns["truth"] = [str(x) for x in truth_vals[keep]] if truth_vals is not None else [
            "" for _ in keep]
        columns["score"] = [_clean(round(float(s), 4)) for s in score[keep]]
        columns["level"] = [str(x) for x in level[keep]]

    clusters_table: list[dict[str, Any]] = []
    if cluster_vals is not None:
        frame = pd.DataFrame({"cluster": cluster_vals, "label": labels, "score": score})
        if conf is not None:
            frame["confidence"] = pd.to_numeric(conf, errors="coerce").to_numpy()
        for name, grp in frame.groupby("cluster", sort=True):
            counts = grp["label"].value_counts()
            clusters_table.append({
                "cluster": str(name),
                "n": int(len(grp)),
                "top_label": str(counts.index[0]),
                "top_fraction": round(float(counts.iloc[0] / len(grp)), 4),
                "mean_confidence": _clean(round(float(grp["confidence"].mean()), 4))
                if "confidence" in grp else None,
                "mean_score": _clean(round(float(grp["score"].mean()), 4))
                if truth is not None else None,
            })

    per_label: list[dict[str, Any]] = []
    level_names: list[str] = []
    if ev is not None:
        from ..evaluation.metrics import LEVELS

        level_names = [str(LEVELS[k]) for k in sorted(LEVELS, reverse=True)]
        for row in ev.per_label.to_dict(orient="records"):
            per_label.append({k: _clean(v) for k, v in row.items() if k != "run"})

    data = {
        "n": len(keep),
        "n_total": n_total,
        "columns": columns,
        "texts": texts,
        "labels": sorted(set(columns["label"]) - {""}),
        "clusters": sorted(set(columns["cluster"]) - {""}) if "cluster" in columns else [],
        "levels": level_names,
        "clusters_table": clusters_table,
        "per_label": per_label,
        "has_score": truth is not None,
        "has_cluster": cluster_vals is not None,
        "groupby": groupby or "",
    }

    # plots
    images: list[tuple[str, str]] = []
    if plots:
        from .. import plot

        figs = [("Predicted labels", plot.label_counts(labels))]
        if ev is not None:
            figs.append(("Score levels", plot.level_bar(ev)))
            figs.append(("Score distribution", plot.score_violin(ev)))
            figs.append(("Truth x prediction", plot.label_heatmap(ev)))
        if table.umap is not None and len(table.umap) == n_total:
            figs.append(("UMAP", plot.umap_figure(
                table.umap, labels, score if ev is not None else None, pred_title=pred)))
        images = [(name, _fig_to_data_uri(fig)) for name, fig in figs]

    metrics_rows: list[tuple[str, str]] = []
    if ev is not None:
        s = ev.summary.iloc[0]
        metrics_rows = [
            ("truth column", truth),
            ("cells scored", f"{int(s['n_cells']):,}"),
            ("mean hierarchical score", f"{s['mean_score']:.3f}"),
            ("exact accuracy (score 1)", f"{s['exact_accuracy']:.3f}"),
            ("major-level accuracy (score \u2265 0.5)", f"{s['major_accuracy']:.3f}"),
            ("macro-F1 on Cell Ontology terms (exact)", f"{s['macro_f1_cl']:.3f}"),
            ("macro-F1 on Cell Ontology terms (more specific counts)",
             f"{s['macro_f1_cl_hierarchical']:.3f}"),
        ]
        from ..evaluation.metrics import LEVELS

        for value, col in LEVEL_COLUMNS.items():
            metrics_rows.append((f"{LEVELS[value]} (score {value:g})", f"{s[col]:.3f}"))
        for note in ev.notes:
            metrics_rows.append(("note", note))

    from .. import __version__

    title = title or f"cellreasoner report: {prov.get('model') or table.stem or 'annotation'}"
    return _render(
        title=title,
        summary=_summary_rows(table, prov, pred, n_total, len(keep)),
        metrics=metrics_rows,
        images=images,
        data=data,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
    )


def write_report(
    results: Any,
    path: str | Path,
    truth: str | None = None,
    pred: str | None = None,
    groupby: str | None = None,
    title: str | None = None,
    pair_table: Any = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    seed: int = 0,
    plots: bool = True,
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

    Returns
    -------
    Path
        The written file.
    """
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"report path {out}: use an .html file name")
    text = build_report(results, truth=truth, pred=pred, groupby=groupby, title=title,
                        pair_table=pair_table, max_cells=max_cells, seed=seed, plots=plots)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _kv_table(rows: Sequence[tuple[str, str]], table_id: str) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="kv" id="{table_id}">{body}</table>'


def _render(
    title: str,
    summary: list[tuple[str, str]],
    metrics: list[tuple[str, str]],
    images: list[tuple[str, str]],
    data: dict[str, Any],
    generated: str,
    version: str,
) -> str:
    script = _SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    metrics_html = (
        f'<section id="metrics"><h2>Metrics</h2>{_kv_table(metrics, "metrics-table")}'
        '<h3>Per truth label</h3><table class="grid" id="per-label"><thead></thead>'
        "<tbody></tbody></table></section>"
        if metrics else ""
    )
    images_html = "".join(
        f'<figure><img alt="{html.escape(name)}" src="{uri}"><figcaption>{html.escape(name)}'
        "</figcaption></figure>"
        for name, uri in images
    )
    plots_html = (
        f'<section id="plots"><h2>Plots</h2><div class="figs">{images_html}</div></section>'
    )
    clusters_html = (
        '<section id="clusters"><h2>Clusters</h2><p class="hint">Click a cluster to show its '
        'cells.</p><table class="grid" id="cluster-table"><thead></thead><tbody></tbody>'
        "</table></section>"
        if data["has_cluster"] else ""
    )
    score_controls = (
        '<label>level <select id="level-filter"><option value="">all</option></select></label>'
        '<label>score \u2265 <input id="score-min" type="number" min="0" max="1" step="0.25" '
        'size="4"></label><label>score \u2264 <input id="score-max" type="number" min="0" '
        'max="1" step="0.25" size="4"></label>'
        if data["has_score"] else ""
    )
    cluster_control = (
        f'<label>{html.escape(data["groupby"])} <select id="cluster-filter"><option value="">all'
        "</option></select></label>"
        if data["has_cluster"] else ""
    )
    values = {
        "CSP": html.escape(csp, quote=False),  # no double quotes in it
        "TITLE": html.escape(title),
        "STYLE": _STYLE,
        "GENERATED": html.escape(generated),
        "VERSION": html.escape(version),
        "SUMMARY": _kv_table(summary, "summary-table"),
        "METRICS": metrics_html,
        "PLOTS": plots_html if images else "",
        "CLUSTERS": clusters_html,
        "CLUSTER_CONTROL": cluster_control,
        "SCORE_CONTROLS": score_controls,
        "DATA": _json_for_script(data),
        "SCRIPT": script,
    }
    # one pass: inserted text (which may contain anything) is never scanned for placeholders
    return re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], _TEMPLATE)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="@@CSP@@">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>@@TITLE@@</title>
<style>@@STYLE@@</style>
</head>
<body>
<header><h1>@@TITLE@@</h1>
<p class="meta">Generated @@GENERATED@@ by cellreasoner @@VERSION@@. Offline page: nothing is
loaded from the network.</p></header>
<main>
<section id="summary"><h2>Summary</h2>@@SUMMARY@@</section>
@@METRICS@@
@@PLOTS@@
@@CLUSTERS@@
<section id="cells"><h2>Cells</h2>
<div class="controls">
<label>search <input id="search" type="search" placeholder="cell, label, CL term, truth"></label>
<label>label <select id="label-filter"><option value="">all</option></select></label>
@@CLUSTER_CONTROL@@
@@SCORE_CONTROLS@@
<label>confidence \u2265 <input id="conf-min" type="number" min="0" max="1" step="0.1"
size="4"></label>
<label><input id="flagged-only" type="checkbox"> evidence flagged only</label>
<button id="reset" type="button">reset</button>
</div>
<p id="count" class="count"></p>
<table class="grid" id="cell-table"><thead></thead><tbody></tbody></table>
<div class="pager"><button id="prev" type="button">&larr; previous</button>
<span id="page-info"></span><button id="next" type="button">next &rarr;</button></div>
<p class="hint">Click a row for the reasoning. Cited genes are
<mark class="gene present">expressed</mark> or <mark class="gene absent">not expressed</mark>
in that cell.</p>
</section>
</main>
<script type="application/json" id="cr-data">@@DATA@@</script>
<script>@@SCRIPT@@</script>
</body>
</html>
"""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#24364b;color:#fff;padding:14px 24px}header h1{margin:0;font-size:1.35em}
.meta{margin:4px 0 0;font-size:.85em;opacity:.85}
main{padding:8px 24px 40px;max-width:1400px}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table.kv th{text-align:left;padding:2px 16px 2px 0;font-weight:600;color:#444;vertical-align:top}
table.kv td{padding:2px 0}
table.grid{border-collapse:collapse;width:100%;font-size:.88em;background:#fff}
table.grid th,table.grid td{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left;
vertical-align:top}
table.grid thead th{background:#eef1f5}
#cell-table thead th{position:sticky;top:0}
tr.cell-row,#cluster-table tbody tr{cursor:pointer}
tr.cell-row:hover,#cluster-table tbody tr:hover{background:#f3f7fc}
tr.detail td{background:#fbfbf6}
.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;background:#fff;border:1px solid #e4e4e4;padding:8px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85em;color:#555;text-align:center}
.controls{display:flex;flex-wrap:wrap;gap:12px;align-items:center;margin-bottom:8px}
.controls label{font-size:.9em}
.count{font-size:.9em;color:#555}
.pager{margin-top:8px;display:flex;gap:12px;align-items:center}
.hint{font-size:.85em;color:#666}
mark.gene{padding:0 2px;border-radius:3px}
mark.present{background:#c7e9c0}
mark.absent{background:#fcd9c4}
.reasoning,.response{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.9em;background:#fff;border:1px solid #e4e4e4;padding:8px;max-height:420px;
overflow:auto}
.flag{color:#cb181d;font-weight:600}
.lv-0{color:#d73027}.lv-1{color:#e08214}.lv-2{color:#4d9221}.lv-3{color:#1a7837}
"""

_SCRIPT = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("cr-data").textContent);
var C = D.columns, N = D.n, T = D.texts, PAGE = 50;
var page = 0, filtered = [], open = {};
function $(id) { return document.getElementById(id); }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}
function val(col, i) { var a = C[col]; return a ? a[i] : null; }
function fmt(x, d) { return (x === null || x === undefined) ? "" : Number(x).toFixed(d); }
function num(id) { var e = $(id); return e ? parseFloat(e.value) : NaN; }
function sel(id) { var e = $(id); return e ? e.value : ""; }
function fill(select, values) {
  if (!select) { return; }
  values.forEach(function (v) {
    var o = document.createElement("option"); o.value = v; o.textContent = v;
    select.appendChild(o);
  });
}
function levelClass(score) {
  if (score === null || score === undefined) { return ""; }
  return score >= 1 ? "lv-3" : score >= 0.5 ? "lv-2" : score >= 0.25 ? "lv-1" : "lv-0";
}

var hay = new Array(N);
for (var i = 0; i < N; i++) {
  hay[i] = [val("cell", i), val("label", i), val("ontology_id", i), val("ontology_label", i),
            val("truth", i), val("cluster", i)]
    .filter(function (v) { return v !== null && v !== undefined; }).join("\u0001").toLowerCase();
}

var cols = [["cell", "cell"]];
if (D.has_cluster) { cols.push(["cluster", D.groupby]); }
cols.push(["label", "label"], ["cl", "CL term"]);
if (C.confidence) { cols.push(["confidence", "confidence"]); }
if (D.has_score) { cols.push(["truth", "truth"], ["score", "score"], ["level", "level"]); }
if (C.evidence_fraction) { cols.push(["evidence_fraction", "evidence"]); }

function header(table, names) {
  var tr = el("tr");
  names.forEach(function (n) { tr.appendChild(el("th", null, n)); });
  table.querySelector("thead").appendChild(tr);
}
header($("cell-table"), cols.map(function (c) { return c[1]; }));

function highlighted(text, present, absent) {
  var frag = document.createDocumentFragment();
  if (!text) { return frag; }
  var kinds = {};
  present.forEach(function (g) { kinds[g.toUpperCase()] = "present"; });
  absent.forEach(function (g) { kinds[g.toUpperCase()] = "absent"; });
  var names = Object.keys(kinds).sort(function (a, b) { return b.length - a.length; })
    .map(function (g) { return g.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); });
  if (!names.length) { frag.appendChild(document.createTextNode(text)); return frag; }
  var re = new RegExp("(?<![A-Za-z0-9_-])(" + names.join("|") + ")(?![A-Za-z0-9_-])", "gi");
  var last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) { frag.appendChild(document.createTextNode(text.slice(last, m.index))); }
    var kind = kinds[m[1].toUpperCase()];
    var mk = el("mark", "gene " + kind, m[1]);
    mk.title = kind === "present" ? "expressed in this cell" : "not expressed in this cell";
    frag.appendChild(mk);
    last = re.lastIndex;
    if (m[0].length === 0) { re.lastIndex++; }
  }
  if (last < text.length) { frag.appendChild(document.createTextNode(text.slice(last))); }
  return frag;
}

function detail(i) {
  var td = el("td"); td.colSpan = cols.length;
  var present = val("present", i) || [], absent = val("absent", i) || [];
  var reasoning = T[val("reasoning", i)] || "", response = T[val("response", i)] || "";
  if (C.cluster_label) {
    var agree = val("cluster_agreement", i);
    td.appendChild(el("p", null, "cluster label: " + val("cluster_label", i) +
      (agree === null || agree === undefined ? "" : " (agreement " + fmt(agree, 2) + ")")));
  }
  if (reasoning) {
    td.appendChild(el("h4", null, "Reasoning"));
    var r = el("div", "reasoning"); r.appendChild(highlighted(reasoning, present, absent));
    td.appendChild(r);
  }
  td.appendChild(el("h4", null, "Model response"));
  var resp = el("div", "response");
  resp.appendChild(reasoning ? document.createTextNode(response)
                             : highlighted(response, present, absent));
  td.appendChild(resp);
  var ev = el("p");
  ev.appendChild(el("strong", null, "cited, expressed: "));
  ev.appendChild(document.createTextNode(present.join(", ") || "none"));
  ev.appendChild(el("br"));
  ev.appendChild(el("strong", null, "cited, not expressed: "));
  ev.appendChild(document.createTextNode(absent.join(", ") || "none"));
  if (val("evidence_flag", i) === true) {
    ev.appendChild(el("br"));
    ev.appendChild(el("span", "flag", "flagged: the reasoning leans on genes this cell does not " +
                                      "express"));
  }
  td.appendChild(ev);
  var tr = el("tr", "detail"); tr.appendChild(td);
  return tr;
}

function cellRow(i) {
  var tr = el("tr", "cell-row");
  tr.dataset.index = String(i);
  cols.forEach(function (c) {
    var k = c[0], td;
    if (k === "cl") {
      var id = val("ontology_id", i), lab = val("ontology_label", i);
      td = el("td", "col-cl", id ? id + (lab ? " " + lab : "") : "");
    } else if (k === "confidence" || k === "evidence_fraction") {
      td = el("td", "col-" + k, fmt(val(k, i), 2));
      if (k === "evidence_fraction" && val("evidence_flag", i) === true) {
        td.className += " flag"; td.title = "reasoning cites genes this cell does not express";
      }
    } else if (k === "score") {
      td = el("td", "col-score " + levelClass(val("score", i)), fmt(val("score", i), 2));
    } else {
      td = el("td", "col-" + k, val(k, i));
    }
    tr.appendChild(td);
  });
  tr.addEventListener("click", function () {
    if (open[i]) { open[i].remove(); delete open[i]; return; }
    open[i] = detail(i); tr.after(open[i]);
  });
  return tr;
}

function render() {
  var body = $("cell-table").querySelector("tbody");
  body.replaceChildren(); open = {};
  var pages = Math.max(1, Math.ceil(filtered.length / PAGE));
  if (page >= pages) { page = pages - 1; }
  var start = page * PAGE, stop = Math.min(filtered.length, start + PAGE);
  for (var j = start; j < stop; j++) { body.appendChild(cellRow(filtered[j])); }
  $("count").textContent = filtered.length + " of " + N + " cells match" +
    (D.n_total > N ? " (browser holds a sample of " + N + " of " + D.n_total + " cells)" : "");
  $("page-info").textContent = "page " + (page + 1) + " / " + pages;
  $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
}

function apply() {
  var q = $("search").value.trim().toLowerCase();
  var lab = sel("label-filter"), clu = sel("cluster-filter"), lev = sel("level-filter");
  var smin = num("score-min"), smax = num("score-max"), cmin = num("conf-min");
  var flagged = $("flagged-only").checked;
  filtered = [];
  for (var i = 0; i < N; i++) {
    if (q && hay[i].indexOf(q) < 0) { continue; }
    if (lab && val("label", i) !== lab) { continue; }
    if (clu && val("cluster", i) !== clu) { continue; }
    if (lev && val("level", i) !== lev) { continue; }
    var s = val("score", i);
    if (!isNaN(smin) && !(s !== null && s !== undefined && s >= smin)) { continue; }
    if (!isNaN(smax) && !(s !== null && s !== undefined && s <= smax)) { continue; }
    var c = val("confidence", i);
    if (!isNaN(cmin) && !(c !== null && c !== undefined && c >= cmin)) { continue; }
    if (flagged && val("evidence_flag", i) !== true) { continue; }
    filtered.push(i);
  }
  page = 0; render();
}

fill($("label-filter"), D.labels);
fill($("cluster-filter"), D.clusters);
fill($("level-filter"), D.levels);
["search", "score-min", "score-max", "conf-min"].forEach(function (id) {
  if ($(id)) { $(id).addEventListener("input", apply); }
});
["label-filter", "cluster-filter", "level-filter", "flagged-only"].forEach(function (id) {
  if ($(id)) { $(id).addEventListener("change", apply); }
});
$("reset").addEventListener("click", function () {
  document.querySelectorAll(".controls input, .controls select").forEach(function (e) {
    if (e.type === "checkbox") { e.checked = false; } else { e.value = ""; }
  });
  apply();
});
$("prev").addEventListener("click", function () { page--; render(); });
$("next").addEventListener("click", function () { page++; render(); });

if (D.has_cluster) {
  var ct = $("cluster-table");
  var cnames = [D.groupby, "cells", "majority label", "fraction"];
  if (D.clusters_table.length && D.clusters_table[0].mean_confidence !== null) {
    cnames.push("mean confidence");
  }
  if (D.has_score) { cnames.push("mean score"); }
  header(ct, cnames);
  D.clusters_table.forEach(function (r) {
    var tr = el("tr");
    tr.appendChild(el("td", null, r.cluster)); tr.appendChild(el("td", null, r.n));
    tr.appendChild(el("td", null, r.top_label));
    tr.appendChild(el("td", null, fmt(r.top_fraction, 2)));
    if (cnames.indexOf("mean confidence") >= 0) {
      tr.appendChild(el("td", null, fmt(r.mean_confidence, 2)));
    }
    if (D.has_score) { tr.appendChild(el("td", levelClass(r.mean_score), fmt(r.mean_score, 3))); }
    tr.addEventListener("click", function () {
      $("cluster-filter").value = r.cluster; apply();
      $("cells").scrollIntoView();
    });
    ct.querySelector("tbody").appendChild(tr);
  });
}

if (D.per_label.length && $("per-label")) {
  var pl = $("per-label");
  header(pl, ["truth label", "cells", "mean score", "subtype", "major", "partial", "incorrect",
              "most common prediction", "fraction"]);
  D.per_label.forEach(function (r) {
    var tr = el("tr");
    [r.truth, r.n, fmt(r.mean_score, 3), fmt(r.subtype_correct, 2), fmt(r.major_correct, 2),
     fmt(r.partially_correct, 2), fmt(r.incorrect, 2), r.top_prediction,
     fmt(r.top_prediction_fraction, 2)].forEach(function (v) {
      tr.appendChild(el("td", null, v));
    });
    pl.querySelector("tbody").appendChild(tr);
  });
}

apply();
document.body.dataset.ready = "1";
})();
"""
