"""How ground-truth labels are read as Cell Ontology terms, and truth maps that say it.

An author's label such as ``"MDC"`` (monocyte-derived cells) would be read by the ontology
lookup as "myeloid dendritic cell" and every correct prediction scored 0. A truth map
(``truth`` -> ``cl_id``, e.g. ``tumour_immune_1000.truth_map.tsv``) fixes the reading; every
evaluation reports how each truth label was read (:func:`truth_readings`) and which it could
not read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError

#: How the note of :func:`describe_readings` that lists every reading begins.
READINGS_NOTE_PREFIX = "truth labels read as: "

#: Columns of a truth-map file (tab- or comma-separated; other columns are kept as notes).
TRUTH_MAP_COLUMNS = ("truth", "cl_id")


def read_truth_map(source: str | os.PathLike | Mapping[str, str] | pd.DataFrame
                   ) -> dict[str, str]:
    """A truth map as ``{truth label: CL id}``, checked against the Cell Ontology.

    Parameters
    ----------
    source
        A TSV/CSV path with columns ``truth`` and ``cl_id`` (``cl_label`` and ``note`` may
        follow), a DataFrame with those columns, or a dict.

    Returns
    -------
    dict
        Truth label (whitespace-stripped) -> CL id.
    """
    from ..ontology import get_ontology

    where = "the truth map"
    if isinstance(source, Mapping):
        pairs = [(str(k), str(v)) for k, v in source.items()]
    else:
        if isinstance(source, pd.DataFrame):
            df = source
        else:
            path = Path(os.fspath(source)).expanduser()
            where = str(path)
            if not path.is_file():
                raise InputError(f"Truth map not found: {path}. Give a TSV with columns "
                                 "'truth' and 'cl_id'.")
            sep = "," if path.suffix.lower() == ".csv" else "\t"
            try:
                df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise InputError(f"Truth map {path}: cannot be parsed ({exc}).") from exc
        missing = [c for c in TRUTH_MAP_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"Truth map {where} lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(map(str, df.columns))}. Expected 'truth' and "
                             "'cl_id' (e.g. 'MDC<TAB>CL:0000113').")
        pairs = list(zip(df["truth"].astype(str), df["cl_id"].astype(str), strict=True))
    onto = get_ontology()
    out: dict[str, str] = {}
    for truth, cl_id in pairs:
        truth, cl_id = truth.strip(), cl_id.strip()
        if not truth:
            continue
        if not onto.exists(cl_id):
            raise InputError(f"Truth map {where}: {truth!r} -> {cl_id!r} is not a Cell "
                             "Ontology term id (CL:0000000 form).")
        if out.get(truth, cl_id) != cl_id:
            raise InputError(f"Truth map {where}: {truth!r} is mapped twice, to "
                             f"{out[truth]} and {cl_id}; keep one row per truth label.")
        out[truth] = cl_id
    return out


def truth_readings(labels: Any, truth_map: Mapping[str, str] | None = None) -> pd.DataFrame:
    """How each distinct truth label is read.

    Parameters
    ----------
    labels
        Truth labels (any iterable of text).
    truth_map
        ``{truth label: CL id}`` (:func:`read_truth_map`), consulted first.

    Returns
    -------
    pandas.DataFrame
        One row per distinct label: ``truth``, ``cl_id``, ``cl_label`` and ``source``
        (``"truth map"``, ``"ontology"`` or ``"unmapped"``).
    """
    from ..ontology import get_ontology, ground_labels

    distinct = [t for t in dict.fromkeys(str(x) for x in labels) if t]
    truth_map = dict(truth_map or {})
    onto = get_ontology()
    ids, names = ground_labels(distinct)
    rows = []
    for t, cl_id, name in zip(distinct, ids, names, strict=True):
        if t in truth_map:
            rows.append((t, truth_map[t], onto.label(truth_map[t]), "truth map"))
        elif cl_id:
            rows.append((t, cl_id, name, "ontology"))
        else:
            rows.append((t, "", "", "unmapped"))
    return pd.DataFrame(rows, columns=["truth", "cl_id", "cl_label", "source"])


def scoring_text(truth: np.ndarray, readings: pd.DataFrame) -> np.ndarray:
    """The truth as the scorer should read it: a label the map covers becomes its CL term's
    own name (which the ontology reads as exactly that term); the rest is unchanged."""
    mapped = readings[readings["source"] == "truth map"]
    if mapped.empty:
        return truth
    rename = dict(zip(mapped["truth"], mapped["cl_label"], strict=True))
    return np.array([rename.get(t, t) for t in truth], dtype=object)


def describe_readings(readings: pd.DataFrame) -> list[str]:
    """Notes for a user: each label's reading, and the labels that could not be read."""
    read = readings[readings["source"] != "unmapped"]
    notes = [READINGS_NOTE_PREFIX + "; ".join(
        f"{r.truth} -> {r.cl_label} ({r.cl_id}{', truth map' if r.source == 'truth map' else ''})"
        for r in read.itertuples())] if len(read) else []
    unmapped = readings.loc[readings["source"] == "unmapped", "truth"].tolist()
    if unmapped:
        notes.append(f"{len(unmapped)} truth label(s) could not be read as a Cell Ontology "
                     f"term and score 0 against every prediction: {', '.join(unmapped)}; "
                     "give a truth map (--truth-map TSV: truth, cl_id) to read them")
    return notes


__all__ = ["READINGS_NOTE_PREFIX", "TRUTH_MAP_COLUMNS", "describe_readings", "read_truth_map",
           "scoring_text", "truth_readings"]
