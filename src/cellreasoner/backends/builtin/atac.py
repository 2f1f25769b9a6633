"""The built-in reasoner's ATAC profile: marker evidence read from gene activity.

Gene activity is diffuse: every gene collects background fragments in proportion to its
length, so a raw activity level means something different for each gene, and a few marker
families say little in accessibility. The profile therefore

* leaves out markers that are unreliable in accessibility (:data:`UNRELIABLE`: recombined
  immunoglobulin and T-cell-receptor V segments, whose locus is open in the lineage whatever
  segment a cell uses; mitochondrial and ribosomal genes) and markers without dynamic range
  in this dataset (no sampled cell above the gene's background): they count as unmeasured,
  not absent;
* reads each remaining marker relative to its own activity distribution across the cells:
  its background is the activity at the gene's ``floor_quantile`` (open promoters and long
  genes collect fragments in every cell), and evidence grows from there as RNA's does from
  zero: full presence at the reasoner's ``level`` above that background.

The threshold is relative (a quantile of each gene), so nothing is tuned to a dataset's
labels. Scaling full presence to each gene's upper quantiles instead was tried on activity
simulated from labelled RNA and scored lower (``bench/atac.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ...matrix import MatrixSource

if TYPE_CHECKING:
    from .reasoner import Reasoner

#: Marker families whose gene activity does not follow their expression.
UNRELIABLE = re.compile(r"^(?:IG[HKL]V\d\w*|TR[ABDG]V\d\w*|MT-\w+|RP[SL]\d+\w*)$")
#: Cells sampled (evenly through the data) for each marker's activity distribution.
SAMPLE_CELLS = 20_000


@dataclass(frozen=True)
class AtacProfile:
    """Per-marker thresholds relative to the activity distribution (see the module text).

    Attributes
    ----------
    floor_quantile
        The gene's background: activity at this quantile of the cells (zeros included) and
        below is no evidence (default 0.25).
    """

    floor_quantile: float = 0.25

    def thresholds(self, source: MatrixSource, reasoner: Reasoner
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data columns of the measured markers, their backgrounds, the activity above it
        that is full presence); unreliable and flat markers are left out."""
        from ...checks import log_normalize, looks_like_counts

        genes = [str(g) for g in source.var_names]
        cols, idx, _ = reasoner._gene_columns(genes)
        keep = np.array([UNRELIABLE.match(reasoner.genes[m]) is None for m in idx], dtype=bool)
        cols = np.unique(cols[keep]) if len(cols) else cols
        if len(cols) == 0:
            return cols, np.zeros(0, np.float32), np.zeros(0, np.float32)
        step = max(1, int(np.ceil(source.n_obs / SAMPLE_CELLS)))
        parts, at = [], 0
        for chunk in source.iter_chunks():
            rows = np.arange((-at) % step, chunk.shape[0], step)
            at += chunk.shape[0]
            block = chunk[rows]
            if looks_like_counts(block):
                block = log_normalize(block)
            parts.append(block[:, cols])
        sample = sp.vstack(parts).toarray().astype(np.float32)
        floor = np.quantile(sample, self.floor_quantile, axis=0).astype(np.float32)
        ok = sample.max(axis=0) > floor  # flat: no sampled cell above the background
        width = np.full(int(ok.sum()), reasoner.level, dtype=np.float32)
        return cols[ok], floor[ok], width

    def calibrate(self, source: MatrixSource, reasoner: Reasoner) -> MatrixSource:
        """``source`` as the reasoner should read it: measured markers' activity mapped to
        evidence relative to each gene's distribution, unreliable or flat markers renamed so
        they count as unmeasured; every other gene unchanged."""
        from ...checks import log_normalize, looks_like_counts

        cols, floor, width = self.thresholds(source, reasoner)
        n_vars = len(source.var_names)
        is_marker = np.zeros(n_vars, dtype=bool)
        is_marker[cols] = True
        lo = np.zeros(n_vars, np.float32)
        span = np.ones(n_vars, np.float32)
        lo[cols], span[cols] = floor, np.maximum(width, 1e-6)
        # full presence just above the reasoner's level: saturated evidence stays 1, and the
        # values never read as whole-number counts
        full = np.float32(reasoner.level * 1.0001)
        names = np.asarray(source.var_names).astype(object)
        measured_markers = set(reasoner._gene_columns([str(g) for g in names])[0].tolist())
        for j in measured_markers - set(cols.tolist()):
            names[j] = f"{names[j]} (not read in ATAC)"

        def chunks(size: int):
            for chunk in source.iter_chunks(size):
                if looks_like_counts(chunk):
                    chunk = log_normalize(chunk)
                chunk = sp.csr_matrix(chunk, dtype=np.float32, copy=True)
                c = chunk.indices
                m = is_marker[c]
                v = chunk.data
                v[m] = full * np.clip((v[m] - lo[c[m]]) / span[c[m]], 0.0, 1.0)
                chunk.eliminate_zeros()
                yield chunk

        return MatrixSource(n_obs=source.n_obs, var_names=names.astype(str),
                            obs_names=source.obs_names, _chunks=chunks,
                            description=f"{source.description} (ATAC profile)")


__all__ = ["UNRELIABLE", "AtacProfile"]
