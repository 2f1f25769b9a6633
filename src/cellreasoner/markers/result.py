"""What ``annotate_markers`` returns: :class:`MarkerAnnotation`, one table per backend with
the same columns (:data:`OUTPUT_COLUMNS`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: The per-cluster output columns, in order.
OUTPUT_COLUMNS = ("cluster", "cellreasoner_label", "cellreasoner_ontology_id",
                  "cellreasoner_ontology_label", "cellreasoner_confidence",
                  "cellreasoner_reasoning", "cellreasoner_supporting_markers",
                  "cellreasoner_backend")
#: Added by ``check_labels=True``.
CHECK_COLUMNS = ("label_check", "label_check_reason")
#: Markers per cluster the built-in reasoner reads by default.
BUILTIN_TOP = 50


@dataclass
class MarkerAnnotation:
    """The answers for one marker table from one backend.

    Attributes
    ----------
    table
        One row per cluster: :data:`OUTPUT_COLUMNS` (plus :data:`CHECK_COLUMNS` when the
        labels were checked).
    backend
        The backend's name (``"builtin"``, ``"openai"``, ...).
    model
        The backend's model (the knowledge-base version for the built-in reasoner).
    provenance
        How the run was made: input, layout, filters, prompt style, cache, seconds.
    """

    table: pd.DataFrame
    backend: str
    model: str
    provenance: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MarkerAnnotation({len(self.table)} clusters, backend={self.backend!r}, "
                f"model={self.model!r})")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`table` as CSV (atomically, spreadsheet formulas escaped)."""
        from ..annotation.output import write_csv

        return write_csv(self.table, path)


__all__ = ["BUILTIN_TOP", "CHECK_COLUMNS", "OUTPUT_COLUMNS", "MarkerAnnotation"]
