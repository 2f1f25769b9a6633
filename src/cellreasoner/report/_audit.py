"""The report's label-audit section, when the AnnData carries :func:`cellreasoner.audit.audit`
columns (``{key}_status`` with ``{key}_alternative``).

Written as static, escaped HTML on the server side (no script needed): the counts per status
and the per-label summary (the same table ``cellreasoner audit --summary`` writes), both
from what the audit stored in ``uns[key]``; counted from ``obs`` with the audit's own
:func:`~cellreasoner.audit.label_summary` when a CSV lost it.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from ..audit import STATUSES, label_summary

#: Per-label columns shown, with their headings.
_COLUMNS = (("label", "label"), ("ontology_label", "CL term"), ("n_cells", "cells"),
            ("consistent", "consistent"), ("contradicted", "contradicted"),
            ("unsupported", "unsupported"), ("looks_like", "contradicted cells look like"))


def audit_keys(obs: pd.DataFrame) -> list[str]:
    """Prefixes of the audit column sets in ``obs`` (``"audit"`` for ``audit_status``)."""
    keys = []
    for c in map(str, obs.columns):
        if not c.endswith("_status") or f"{c[:-7]}_alternative" not in obs:
            continue
        values = set(obs[c].dropna().astype(str).unique())
        if values <= set(STATUSES):
            keys.append(c[:-7])
    return keys


def _summary(obs: pd.DataFrame, uns: dict[str, Any], key: str) -> pd.DataFrame | None:
    info = uns.get(key) if isinstance(uns, dict) else None
    if isinstance(info, dict) and isinstance(info.get("summary"), dict):
        return pd.DataFrame({k: list(v) for k, v in info["summary"].items()})
    labels = info.get("labels") if isinstance(info, dict) else None
    if not labels or labels not in obs:
        return None
    return label_summary(pd.DataFrame({
        "label": obs[labels].astype(str).to_numpy(),
        "status": obs[f"{key}_status"].astype(str).to_numpy(),
        "alternative": obs[f"{key}_alternative"].astype(str).to_numpy()}))


def _counts(obs: pd.DataFrame, info: Any, key: str) -> dict[str, int]:
    """Cells per status: the audit's own counts (``uns[key]["counts"]``), else ``obs``'s."""
    stored = info.get("counts") if isinstance(info, dict) else None
    if isinstance(stored, dict) and set(stored) == set(STATUSES):
        return {s: int(stored[s]) for s in STATUSES}
    counts = obs[f"{key}_status"].astype(str).value_counts()
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def audit_section(obs: pd.DataFrame, uns: dict[str, Any]) -> str:
    """The ``<section id="audit">`` HTML, or ``""`` without audit columns."""
    parts = []
    for key in audit_keys(obs):
        info = uns.get(key) if isinstance(uns, dict) else None
        counts = _counts(obs, info, key)
        line = ", ".join(f"{counts[s]:,} {s}" for s in STATUSES)
        column = info.get("labels") if isinstance(info, dict) else None
        head = f"Labels of <code>{html.escape(str(column))}</code>: " if column else ""
        parts.append(f'<p class="audit-counts">{head}{html.escape(line)} cells.</p>')
        summary = _summary(obs, uns, key)
        if summary is None:
            continue
        cols = [(c, h) for c, h in _COLUMNS if c in summary.columns]
        thead = "".join(f"<th>{html.escape(h)}</th>" for _, h in cols)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c, _ in cols) + "</tr>"
            for row in summary.to_dict("records"))
        parts.append(f'<table class="grid" id="audit-{html.escape(key)}"><thead><tr>{thead}'
                     f"</tr></thead><tbody>{body}</tbody></table>")
    if not parts:
        return ""
    return ('<section id="audit"><h2>Label audit</h2><p class="hint">Each cell\'s own '
            "expression checked against its label's markers and the best alternative "
            "(cellreasoner audit).</p>" + "".join(parts) + "</section>")


__all__ = ["audit_keys", "audit_section"]
