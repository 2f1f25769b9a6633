"""The HTML page: the templates (package data under ``templates/``) and their filling.

``report.html`` has ``@@NAME@@`` placeholders, filled in one pass so that inserted text (which
may contain anything) is never scanned for placeholders; ``report.css`` and ``report.js`` are
inlined, and the Content Security Policy allows only that script, by its SHA-256.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ._data import _json_for_script


@functools.cache
def template(name: str) -> str:
    """The text of ``templates/<name>`` (read as bytes: exactly what the file holds)."""
    path = resources.files(__package__).joinpath("templates").joinpath(name)
    return path.read_bytes().decode("utf-8")


def _kv_table(rows: Sequence[tuple[str, str]], table_id: str) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="kv" id="{table_id}">{body}</table>'


def render(
    title: str,
    summary: list[tuple[str, str]],
    metrics: list[tuple[str, str]],
    images: list[tuple[str, str]],
    data: dict[str, Any],
    generated: str,
    version: str,
    audit: str = "",
) -> str:
    """The page: ``report.html`` with its placeholders filled, the script pinned by hash."""
    script = template("report.js")
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
        "STYLE": template("report.css"),
        "GENERATED": html.escape(generated),
        "VERSION": html.escape(version),
        "SUMMARY": _kv_table(summary, "summary-table"),
        "METRICS": metrics_html,
        "AUDIT": audit,  # static HTML, escaped by report._audit
        "PLOTS": plots_html if images else "",
        "CLUSTERS": clusters_html,
        "CLUSTER_CONTROL": cluster_control,
        "SCORE_CONTROLS": score_controls,
        "DATA": _json_for_script(data),
        "SCRIPT": script,
    }
    # one pass: inserted text (which may contain anything) is never scanned for placeholders
    return re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], template("report.html"))

