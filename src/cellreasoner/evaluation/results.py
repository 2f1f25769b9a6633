"""Reading annotation results: AnnData, ``.h5ad``, result CSV or DataFrame -> :class:`ResultTable`.

A run is an annotated AnnData (in memory or ``.h5ad``), a result CSV (``cell_name``,
``response``, ``labels``, ``label``, ...), or a DataFrame. This module finds the prediction column
and the provenance of the run that wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._spreadsheet import unescape_frame
from ..errors import InputError

#: Default prediction column of an annotated AnnData and of a result CSV, tried in this order.
DEFAULT_PRED_COLUMNS = ("cellreasoner_label", "label")


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
    notes
        What reading it did that a user should know (e.g. labels parsed from responses).
    """

    obs: pd.DataFrame
    uns: dict[str, Any]
    source: str
    stem: str | None = None
    umap: np.ndarray | None = None
    adata: Any = None
    notes: list[str] = field(default_factory=list)


def as_text(values: Sequence[Any] | pd.Series) -> np.ndarray:
    """Labels as stripped strings; missing values become ``""``.

    Parameters
    ----------
    values
        Labels (any dtype; categorical, object, with ``NaN``/``None``).

    Returns
    -------
    numpy.ndarray
        An object array of ``str``.
    """
    s = pd.Series(values, dtype=object)
    s = s.where(s.notna(), "")
    return s.astype(str).str.strip().to_numpy(dtype=object)


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


def _read_file(path: Path) -> ResultTable:
    """A result ``.h5ad`` (without its matrix) or a ``.csv``/``.tsv``/``.txt`` table."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected an annotated .h5ad or a result CSV)")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        return _read_h5ad_light(path)
    if suffix in (".csv", ".tsv", ".txt"):
        sep = "\t" if suffix == ".tsv" else ","
        try:
            # our CSVs escape formula-like text for spreadsheets: read it back as it was
            df = unescape_frame(pd.read_csv(path, sep=sep, keep_default_na=False,
                                            na_values=[""]))
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot be parsed as a result table ({exc})") from exc
        return ResultTable(obs=_frame_from_table(df, str(path)), uns={}, source=str(path),
                           stem=path.stem)
    raise InputError(
        f"{path}: unsupported file type '{suffix}'; give an annotated .h5ad or a result .csv"
    )


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
        return _read_file(Path(obj))
    raise InputError(
        f"cannot evaluate an object of type {type(obj).__name__}; give an AnnData, a DataFrame "
        "or a path to an .h5ad / .csv file"
    )


def default_pred_column(table: ResultTable) -> str:
    """Find the prediction column of a result table.

    Tries ``cellreasoner_label`` and ``label``, then a single ``<key>_label`` column that has a
    matching ``<key>_confidence`` column (annotations written with another ``key_added``).

    Parameters
    ----------
    table
        A loaded result.

    Returns
    -------
    str
        The column name.
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


def _is_response_column(col: str) -> bool:
    """Raw model responses (``response``, ``<key>_response``), not labels."""
    return col == "response" or col.endswith("_response")


def _default_or_response(table: ResultTable) -> str:
    """The default prediction column, else a ``response`` column (the upstream result CSV,
    ``cell_name,response[,labels]``, has no label column: its labels are parsed)."""
    try:
        return default_pred_column(table)
    except InputError:
        if "response" in table.obs.columns:
            return "response"
        raise


def _parsed_labels(table: ResultTable, col: str) -> str:
    """Parse the responses in ``obs[col]`` into labels (one parser: the one ``annotate``
    uses) in a new column, so scores, per-label tables, heatmaps and reports show labels,
    never whole reasoning texts; the new column's name."""
    from ..parsing import parse_response

    out = f"{col} (parsed)"
    if out not in table.obs.columns:
        texts = as_text(table.obs[col])
        memo: dict[str, str] = {}
        for t in dict.fromkeys(texts):  # upstream results may be of either mode
            memo[t] = parse_response(t, reasoning_mode=True).label
        table.obs[out] = [memo[t] for t in texts]
        table.notes.append(f"{table.source}: labels parsed from the '{col}' column "
                           f"({len(memo)} distinct responses -> "
                           f"{len(set(memo.values()) - {''})} labels)")
    return out


def prediction_column(table: ResultTable, pred: str | None = None) -> str:
    """The column holding a run's labels: ``pred`` or the default one; a column of raw
    responses (``response``, ``*_response``; the upstream result CSV has no other) is parsed
    into labels in a new column, whose name is returned.

    Parameters
    ----------
    table
        A loaded result.
    pred
        The prediction column asked for (default: :func:`default_pred_column`, else
        ``response``).
    """
    col = pred if pred is not None else _default_or_response(table)
    if col in table.obs.columns and _is_response_column(col):
        col = _parsed_labels(table, col)
    return col


def provenance_for(table: ResultTable, pred: str) -> dict[str, Any]:
    """Provenance dict of the annotation run that wrote ``pred`` (``{}`` when unknown).

    Parameters
    ----------
    table
        A loaded result.
    pred
        Its prediction column.

    Returns
    -------
    dict
        A copy of ``uns[key]`` for the run's ``key_added``.
    """
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


def column(obs: pd.DataFrame, prefix: str, name: str) -> pd.Series | None:
    """The column ``f"{prefix}{name}"``, else ``name``, else ``None``.

    Parameters
    ----------
    obs
        The per-cell table.
    prefix
        The prediction column's ``key_added`` prefix (``"cellreasoner_"``, or ``""`` for a CSV).
    name
        Field name (``"confidence"``, ``"cited_present"``, ...).
    """
    for col in (f"{prefix}{name}", name):
        if col in obs.columns:
            return obs[col]
    return None


def field_prefix(pred: str) -> str:
    """``"cellreasoner_"`` for ``"cellreasoner_label"``; ``""`` for ``"label"`` or others."""
    return pred[: -len("label")] if pred.endswith("label") else ""
