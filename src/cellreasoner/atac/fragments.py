"""10x ``fragments.tsv.gz`` streamed into a cells x genes fragment-count matrix.

The file is read in chunks of ``chunk_size`` lines (never whole): each chunk's fragments of
the selected cells are matched to the gene regions they overlap and added to a sparse count
matrix, so memory is bounded by the chunk plus the result (cells x genes non-zeros). The
tabix index (``.tbi``) is not needed for a whole-genome pass.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .genes import GeneRegions, canonical_chrom, overlap_pairs

log = logging.getLogger(__name__)

#: Fragment lines per chunk (about 200 MB of parsed columns at most).
CHUNK_LINES = 2_000_000
#: Chunks whose counts are summed before they are added to the running total (each addition
#: copies the total, so adding chunk by chunk would cost chunks x result size).
MERGE_CHUNKS = 8
#: Cell-selection tables Cell Ranger writes beside the fragments, and their cell flag column.
CELL_TABLES = {"singlecell.csv": "is__cell_barcode", "per_barcode_metrics.csv": "is_cell"}


def _barcode_table(p: Path) -> list[str]:
    """Cells of a barcode file: a Cell Ranger cell table (flagged cells) or one barcode a line
    (first column of a TSV, ``.gz`` allowed)."""
    if p.name.lower().endswith((".csv", ".csv.gz")):
        try:
            t = pd.read_csv(p, dtype={"barcode": str})
        except Exception as exc:  # pandas raises many types on malformed text
            raise InputError(f"Could not read the barcode table {p} ({type(exc).__name__}: "
                             f"{exc}).") from exc
        if "barcode" not in t:
            raise InputError(f"{p}: no 'barcode' column (columns: "
                             f"{', '.join(map(str, t.columns[:8]))}). Pass Cell Ranger's "
                             "singlecell.csv / per_barcode_metrics.csv, or a text file with one "
                             "barcode per line.")
        flag = next((c for c in ("is__cell_barcode", "is_cell") if c in t), None)
        keep = t if flag is None else t[pd.to_numeric(t[flag], errors="coerce").fillna(0) > 0]
        return keep["barcode"].astype(str).tolist()
    t = pd.read_csv(p, sep="\t", header=None, dtype=str, comment="#", usecols=[0])
    return t[0].astype(str).str.strip().tolist()


def cell_barcodes(barcodes: str | os.PathLike | Sequence[str] | None,
                  fragments: Path) -> tuple[list[str], str]:
    """The cells to count and where they came from.

    ``barcodes`` is a list of barcodes, a barcode file (one per line, or Cell Ranger's
    ``singlecell.csv`` / ``per_barcode_metrics.csv``, whose flagged cells are taken), or
    ``None``: the Cell Ranger cell table beside the fragment file.
    """
    if barcodes is None:
        for name in CELL_TABLES:
            candidate = fragments.parent / name
            if candidate.is_file():
                barcodes = candidate
                break
        else:
            raise InputError(
                f"{fragments}: which barcodes are cells? Pass a barcode list (--barcodes "
                "barcodes.tsv, one per line) or Cell Ranger's singlecell.csv / "
                "per_barcode_metrics.csv (its flagged cells are used); none of those is beside "
                "the fragment file.")
    if isinstance(barcodes, str | os.PathLike):
        p = Path(barcodes).expanduser()
        if not p.is_file():
            raise InputError(f"Barcode file not found: {p}.")
        cells, where = _barcode_table(p), str(p)
    else:
        cells, where = [str(b) for b in barcodes], f"{len(barcodes)} barcodes given"
    cells = list(dict.fromkeys(c for c in cells if c))
    if not cells:
        raise InputError(f"{where}: no cell barcodes in it (a cell table needs cells flagged "
                         "1 in is__cell_barcode / is_cell).")
    return cells, where


def _summed(parts: list[sp.csr_matrix]) -> sp.csr_matrix:
    """The sum of a few chunks' count matrices."""
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def _read_chunks(p: Path, chunk_lines: int):
    try:
        reader = pd.read_csv(p, sep="\t", header=None, comment="#", usecols=[0, 1, 2, 3],
                             dtype={0: str, 1: np.int64, 2: np.int64, 3: str},
                             chunksize=chunk_lines, compression="infer", engine="c")
        yield from reader
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as exc:
        raise InputError(
            f"Could not read {p} as a 10x fragment file ({type(exc).__name__}: {exc}). Each "
            "line must be: chrom, start, end, barcode[, count] separated by tabs (a truncated "
            "download also ends like this).") from exc


def count_fragments(
    path: str | os.PathLike,
    regions: GeneRegions,
    cells: Sequence[str],
    *,
    chunk_lines: int = CHUNK_LINES,
    progress: Callable[[int], None] | None = None,
) -> tuple[sp.csr_matrix, dict[str, np.ndarray], dict]:
    """Stream a fragment file into a cells x genes count matrix (Signac's gene activity).

    Parameters
    ----------
    path
        A 10x ``fragments.tsv.gz`` (or plain ``.tsv``): ``chrom, start, end, barcode[, n]``,
        0-based half-open.
    regions
        The counted gene regions (:func:`~cellreasoner.atac.genes.read_gene_annotation`).
    cells
        Barcodes to count, in the order of the result's rows; other barcodes are skipped.
    chunk_lines
        Lines parsed at a time (default 2,000,000): the memory bound.
    progress
        Called with the number of lines read after each chunk.

    Returns
    -------
    tuple
        The counts (each fragment counts once for every gene region it overlaps), per-cell
        ``n_fragments`` and ``n_fragments_in_genes``, and a summary for the provenance.
    """
    p = Path(path)
    cell_index = pd.Index(list(cells))
    n_cells, n_genes = len(cell_index), len(regions)
    by_chrom = regions.by_chrom()
    total = sp.csr_matrix((n_cells, n_genes), dtype=np.float32)
    pending: list[sp.csr_matrix] = []  # chunk counts not yet added to ``total``
    n_frag = np.zeros(n_cells, dtype=np.int64)
    n_in = np.zeros(n_cells, dtype=np.int64)
    lines = kept = 0
    for chunk in _read_chunks(p, chunk_lines):
        lines += len(chunk)
        row = cell_index.get_indexer(chunk[3].to_numpy())
        sel = row >= 0
        if sel.any():
            codes, names = pd.factorize(chunk[0].to_numpy()[sel])
            start, end, row = (chunk[1].to_numpy()[sel], chunk[2].to_numpy()[sel], row[sel])
            kept += len(row)
            np.add.at(n_frag, row, 1)
            order = np.lexsort((start, codes))  # by chromosome, then start
            bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
            rows, cols, inside = [], [], []
            for k, name in enumerate(names):
                reg = by_chrom.get(canonical_chrom(name))
                if reg is None:
                    continue
                seg = order[bounds[k]:bounds[k + 1]]
                f_idx, r_idx = overlap_pairs(start[seg], end[seg], reg[0], reg[1])
                rows.append(row[seg][f_idx])
                cols.append(reg[2][r_idx])
                inside.append(row[seg][np.unique(f_idx)])
            if rows:
                r = np.concatenate(rows)
                c = np.concatenate(cols)
                part = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)),
                                     shape=(n_cells, n_genes))
                pending.append(part)
                if len(pending) == MERGE_CHUNKS:  # one copy of ``total`` per few chunks
                    total = total + _summed(pending)
                    pending = []
                np.add.at(n_in, np.concatenate(inside), 1)
        if progress is not None:
            progress(len(chunk))
    if lines == 0:
        raise InputError(f"{p}: the fragment file has no fragment lines.")
    if kept == 0:
        example = ", ".join(list(cell_index[:2]))
        raise InputError(f"{p}: none of its {lines:,} fragments belongs to the {n_cells:,} "
                         f"selected cells (e.g. {example}). Check that the barcode list comes "
                         "from the same run (including any -1 suffix).")
    if pending:
        total = total + _summed(pending)
    summary = {"fragment_lines": int(lines), "fragments_in_cells": int(kept)}
    return total, {"n_fragments": n_frag, "n_fragments_in_genes": n_in}, summary
