"""The result of an annotation run, and how it writes itself back (CellTypist-style)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._secrets import redact_text
from ..errors import InputError

#: Per-cell output fields, in CSV order (obs columns are ``f"{key_added}_{field}"``).
FIELDS = ("label", "confidence", "ontology_id", "ontology_label", "reasoning", "response",
          "evidence_fraction", "evidence_flag", "cited_present", "cited_absent")
CLUSTER_FIELDS = ("cluster_label", "cluster_agreement", "cluster_mixed")
#: Consensus runs (several backends): agreement and entropy of the vote; each backend's own
#: answer is the field ``label_<name>``.
CONSENSUS_FIELDS = ("agreement", "entropy")
#: Fields written as categorical ``obs`` columns (labels); the rest of the text stays text.
CATEGORICAL_FIELDS = ("label", "ontology_id", "ontology_label", "cluster_label")
#: Float fields (NaN where not measured).
FLOAT_FIELDS = ("confidence", "evidence_fraction", "cluster_agreement", *CONSENSUS_FIELDS)
#: Leading columns of the upstream CellReasoner result CSV.
CSV_UPSTREAM = ("cell_name", "response", "labels")


@dataclass
class AnnotationResult:
    """What :func:`~cellreasoner.annotate` produced (CellTypist-style).

    Attributes
    ----------
    table
        One row per cell (index = cell names): the fields of :data:`FIELDS` (plus
        ``cluster_label``/``cluster_agreement`` in cluster/hybrid mode, ``cluster_mixed``
        where the cells' own answers are known), ``prompt_key`` and
        ``samples`` (JSON list of every self-consistency sample's parsed label).
    provenance
        Backend, model, mode, sampling, counts and timing (also ``adata.uns[key_added]``).
    adata
        The annotated AnnData (the input itself, or its copy with ``copy=True``; opened
        ``backed="r"`` when an ``.h5ad`` path was streamed).
    key_added
        Prefix of the ``obs`` columns.
    truth
        Ground-truth labels (``label_key``), or ``None``.
    clusters
        Cluster mode: one row per cluster (label, confidence, n_cells, markers, response).
    """

    table: pd.DataFrame
    provenance: dict
    adata: object | None = None
    key_added: str = "cellreasoner"
    truth: pd.Series | None = None
    clusters: pd.DataFrame | None = None

    def __repr__(self) -> str:
        p = self.provenance
        return (f"AnnotationResult({p.get('n_cells')} cells, backend={p.get('backend')!r}, "
                f"model={p.get('model')!r}, mode={p.get('mode')!r}, key_added="
                f"{self.key_added!r}; {p.get('unique_prompts')} unique prompts, "
                f"{p.get('model_calls')} model calls, {p.get('cache_hits')} cache hits)")

    @property
    def summary(self) -> dict:
        """Counts and timing: cells, unique prompts, model calls, cache hits, seconds."""
        keys = ("n_cells", "unique_prompts", "model_calls", "generations", "cache_hits",
                "seconds")
        out = {k: self.provenance.get(k) for k in keys}
        secs = out["seconds"] or 0.0
        out["cells_per_second"] = out["n_cells"] / secs if secs > 0 else float("inf")
        return out

    def summary_line(self) -> str:
        """The one-line summary the CLI prints."""
        s = self.summary
        return (f"{s['n_cells']:,} cells, {s['unique_prompts']:,} unique prompts, "
                f"{s['model_calls']:,} model calls, {s['cache_hits']:,} cache hits, "
                f"{s['seconds']:.1f} s ({s['cells_per_second']:,.0f} cells/s)")

    @property
    def fields(self) -> tuple[str, ...]:
        """The per-cell fields this run has (cluster fields in cluster/hybrid mode; ``failure``
        when some prompt failed or did not parse: ``"request"``/``"parse"``, else ``""``;
        in a consensus run :data:`CONSENSUS_FIELDS` and one ``label_<name>`` per backend)."""
        return (FIELDS + tuple(f for f in CLUSTER_FIELDS if f in self.table)
                + (("failure",) if "failure" in self.table else ())
                + (CONSENSUS_FIELDS if "agreement" in self.table else ())
                + tuple(c for c in self.table.columns if str(c).startswith("label_")))

    def to_table(self) -> pd.DataFrame:
        """A copy of the per-cell table."""
        return self.table.copy()

    def to_adata(self, adata=None, key_added: str | None = None):
        """Write the ``obs`` columns and ``uns`` provenance into ``adata`` (default: the
        annotated AnnData) and return it."""
        adata = self.adata if adata is None else adata
        if adata is None:
            raise InputError("No AnnData to write into: pass one to to_adata(adata).")
        key = key_added or self.key_added
        if not np.array_equal(np.asarray(adata.obs_names).astype(str),
                              self.table.index.to_numpy().astype(str)):
            raise InputError(
                "to_adata: the AnnData's cells (obs_names) differ from the annotated cells.")
        # columns of an earlier run with another mode would contradict this one
        stale = [f"{key}_{f}" for f in (*CLUSTER_FIELDS, *CONSENSUS_FIELDS)
                 if f not in self.fields]
        stale += [c for c in adata.obs.columns if str(c).startswith(f"{key}_label_")
                  and str(c)[len(key) + 1:] not in self.fields]
        adata.obs.drop(columns=[c for c in stale if c in adata.obs], inplace=True)
        for f in self.fields:
            adata.obs[f"{key}_{f}"] = _typed(f, self.table[f].to_numpy())
        adata.uns[key] = uns_safe(self.provenance)
        return adata

    def to_cellxgene(self, adata=None, unknown: str = "unknown"):
        """Write ``obs["cell_type_ontology_term_id"]`` as the CELLxGENE schema names it.

        Cells whose label did not map to a Cell Ontology term get ``unknown`` (the schema's
        value for an unknown cell type). Returns the AnnData.
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            raise InputError("No AnnData to write into: pass one to to_cellxgene(adata).")
        adata.obs["cell_type_ontology_term_id"] = pd.Categorical(self.cellxgene_ids(unknown))
        return adata

    def cellxgene_ids(self, unknown: str = "unknown") -> np.ndarray:
        """``cell_type_ontology_term_id`` per cell: the CL id, or ``unknown``."""
        ids = self.table["ontology_id"].astype(str).to_numpy().astype(str)
        return np.where(np.char.startswith(ids, "CL:"), ids, unknown)

    def upstream_frame(self) -> pd.DataFrame:
        """The upstream CellReasoner result layout (``cell_name``, ``response``, ``labels``
        when ground truth exists), then the other fields."""
        df = pd.DataFrame({"cell_name": self.table.index.astype(str),
                           "response": self.table["response"].to_numpy()})
        if self.truth is not None:
            df["labels"] = self.truth.to_numpy()
        for f in self.fields:
            if f != "response":
                df[f] = self.table[f].to_numpy()
        return df

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`upstream_frame` as CSV (atomic)."""
        from .output import write_csv

        return write_csv(self.upstream_frame(), path)

    def to_parquet(self, path: str | os.PathLike) -> Path:
        """Write :meth:`upstream_frame` as Parquet (atomic): the obs-only output, no matrix."""
        from .output import write_parquet

        return write_parquet(self.upstream_frame(), path)

    def write(self, path: str | os.PathLike, *, cellxgene: bool = False,
              ahead=None) -> Path:
        """Write the result where ``path``'s suffix says: ``.h5ad`` (the annotated AnnData,
        see :func:`cellreasoner.annotation.output.write_h5ad`; ``ahead``, a
        :class:`~cellreasoner.annotation.output.CopyAhead` of the input started before the
        annotation), ``.csv`` or ``.parquet`` (the per-cell table only). Returns the path."""
        from .output import write_result

        return write_result(self, path, cellxgene=cellxgene, ahead=ahead)


def _typed(field: str, values: np.ndarray):
    """A field's values as the ``obs`` column type it is written with."""
    if field in ("evidence_flag", "cluster_mixed"):
        return values.astype(bool)
    if field in FLOAT_FIELDS:
        return values.astype(np.float64)
    # text stays Python str objects: a fixed-width numpy str copy of a million traces would
    # cost gigabytes
    text = values if values.dtype == object else values.astype(str).astype(object)
    # few distinct values: ready for sc.pl.* colouring
    if field in CATEGORICAL_FIELDS or field.startswith("label_"):
        return pd.Categorical(text)
    return text


def uns_safe(obj):
    """JSON/h5ad-safe copy: no ``None`` (dropped), numpy scalars to Python, credentials in
    URLs (a server's ``user:password@`` or ``?api-key=``) replaced by ``***``."""
    if isinstance(obj, str):
        return redact_text(obj) if "://" in obj else obj
    if isinstance(obj, dict):
        return {str(k): uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [uns_safe(v) for v in obj if v is not None]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
