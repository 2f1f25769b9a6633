"""The page's data: JSON-safe per-cell columns, the cluster table and the cell sample."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation.results import as_text


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


class _TextPool:
    """Long texts stored once (cluster mode repeats one reasoning per cluster)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}

    def ref(self, text: str) -> int:
        """Index of ``text`` in :attr:`texts` (added when new)."""
        if text not in self._index:
            self._index[text] = len(self.texts)
            self.texts.append(text)
        return self._index[text]


@dataclass
class CellArrays:
    """Per-cell arrays over all cells of the run (the page shows a sample of them).

    ``truth`` is ``None`` when the result lacks the truth column, ``cluster`` when there is no
    ``groupby``; ``score``/``level`` are NaN/``""`` for unscored cells. ``has_truth`` says
    whether a truth column was asked for.
    """

    labels: np.ndarray
    onto_id: np.ndarray
    onto_label: np.ndarray
    reasoning: np.ndarray
    response: np.ndarray
    present: list[list[str]]
    absent: list[list[str]]
    score: np.ndarray
    level: np.ndarray
    has_truth: bool
    cluster: np.ndarray | None = None
    truth: np.ndarray | None = None


def _optional_columns(field: Any, keep: np.ndarray) -> dict[str, list[Any]]:
    """Confidence, evidence and cluster-label columns, for the fields the result has."""
    out: dict[str, list[Any]] = {}
    if field("confidence") is not None:
        out["confidence"] = _float_list(field("confidence").to_numpy()[keep])
    if field("evidence_fraction") is not None:
        out["evidence_fraction"] = _float_list(field("evidence_fraction").to_numpy()[keep])
    if field("evidence_flag") is not None:
        out["evidence_flag"] = _bool_list(field("evidence_flag").to_numpy()[keep])
    if field("cluster_label") is not None:
        out["cluster_label"] = [str(x) for x in as_text(field("cluster_label"))[keep]]
    if field("cluster_agreement") is not None:
        out["cluster_agreement"] = _float_list(field("cluster_agreement").to_numpy()[keep])
    return out


def cell_columns(obs: pd.DataFrame, field: Any, keep: np.ndarray, pool: _TextPool,
                 cells: CellArrays) -> dict[str, list[Any]]:
    """The per-cell columns of the page, for the kept cells.

    Parameters
    ----------
    obs
        The result's cell table.
    field
        ``name -> Series or None``: the annotation field ``name`` of this run.
    keep
        Indices of the cells shown.
    pool
        Where reasoning and response texts are stored once.
    cells
        The per-cell arrays.
    """
    columns: dict[str, list[Any]] = {
        "cell": [str(c) for c in obs.index[keep]],
        "label": [str(x) for x in cells.labels[keep]],
        "ontology_id": [str(x) for x in cells.onto_id[keep]],
        "ontology_label": [str(x) for x in cells.onto_label[keep]],
        "reasoning": [pool.ref(str(x)) for x in cells.reasoning[keep]],
        "response": [pool.ref(str(x)) for x in cells.response[keep]],
        "present": [cells.present[i] for i in keep],
        "absent": [cells.absent[i] for i in keep],
    }
    columns.update(_optional_columns(field, keep))
    if cells.cluster is not None:
        columns["cluster"] = [str(x) for x in cells.cluster[keep]]
    if cells.has_truth:
        columns["truth"] = [str(x) for x in cells.truth[keep]] if cells.truth is not None else [
            "" for _ in keep]
        columns["score"] = [_clean(round(float(s), 4)) for s in cells.score[keep]]
        columns["level"] = [str(x) for x in cells.level[keep]]
    return columns


def cluster_rows(cluster_vals: np.ndarray, labels: np.ndarray, score: np.ndarray,
                 conf: pd.Series | None, has_truth: bool) -> list[dict[str, Any]]:
    """One row per cluster: size, majority label and its fraction, mean confidence / score."""
    rows: list[dict[str, Any]] = []
    frame = pd.DataFrame({"cluster": cluster_vals, "label": labels, "score": score})
    if conf is not None:
        frame["confidence"] = pd.to_numeric(conf, errors="coerce").to_numpy()
    for name, grp in frame.groupby("cluster", sort=True):
        counts = grp["label"].value_counts()
        rows.append({
            "cluster": str(name),
            "n": int(len(grp)),
            "top_label": str(counts.index[0]),
            "top_fraction": round(float(counts.iloc[0] / len(grp)), 4),
            "mean_confidence": _clean(round(float(grp["confidence"].mean()), 4))
            if "confidence" in grp else None,
            "mean_score": _clean(round(float(grp["score"].mean()), 4))
            if has_truth else None,
        })
    return rows
