"""Gene models for gene activity: a GTF/GFF3 file read into one region per gene.

The region of a gene is Signac's ``GeneActivity`` one: the gene body extended ``upstream``
bases (default 2,000) upstream of the TSS, strand-aware (``-`` strand genes are extended past
their end), protein-coding genes only and at most ``max_width`` bases wide (Signac's defaults).
Coordinates are kept 0-based half-open (BED, like fragment files): a GTF/GFF3 ``start`` of 1
is position 0.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io._detect import GZIP_SIGNATURE, first_bytes

log = logging.getLogger(__name__)

#: Signac ``GeneActivity`` defaults.
UPSTREAM = 2000
MAX_WIDTH = 500_000
BIOTYPES = ("protein_coding",)

#: Environment variable pointing at a local gene annotation (GTF/GFF3).
GTF_ENV = "CELLREASONER_GTF"
#: GENCODE basic (human, GRCh38), the default annotation when none is given.
GENCODE_BASIC_URL = ("https://ftp.ebi.ac.uk/pub/databases/gencode/Gencode_human/release_44/"
                     "gencode.v44.basic.annotation.gtf.gz")
GENCODE_BASIC_FILE = "gencode.v44.basic.annotation.gtf.gz"
#: Its sha256. ``None``: not pinned in this release (no network where it was written), so it
#: is never downloaded; a copy the user puts in the cache (or passes) is read.
GENCODE_BASIC_SHA256: str | None = None

_GTF_ATTR = re.compile(r'(\S+)\s+"([^"]*)"')
_NAME_KEYS = ("gene_name", "Name", "gene", "gene_symbol")
_TYPE_KEYS = ("gene_type", "gene_biotype", "biotype")


@dataclass
class GeneRegions:
    """One region per gene, sorted by chromosome and start (0-based half-open).

    Attributes
    ----------
    table
        ``gene``, ``chrom`` (as the annotation spells it), ``start``, ``end``, ``strand``,
        ``region_start``, ``region_end`` (the counted region) and ``gene_type``.
    source
        The annotation file, for the provenance.
    upstream
        Bases added upstream of the TSS.
    """

    table: pd.DataFrame
    source: str
    upstream: int = UPSTREAM

    @property
    def genes(self) -> np.ndarray:
        """Gene symbols, one per region, in the order of :attr:`table`."""
        return self.table["gene"].to_numpy(dtype=object)

    def __len__(self) -> int:
        return len(self.table)

    def by_chrom(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per canonical chromosome name (see :func:`canonical_chrom`): region starts, ends
        and gene indices, sorted by start."""
        out = {}
        t = self.table
        keys = t["chrom"].map(canonical_chrom).to_numpy()
        for chrom in pd.unique(keys):
            rows = np.flatnonzero(keys == chrom)
            order = rows[np.argsort(t["region_start"].to_numpy()[rows], kind="stable")]
            out[chrom] = (t["region_start"].to_numpy()[order].astype(np.int64),
                          t["region_end"].to_numpy()[order].astype(np.int64),
                          order.astype(np.int64))
        return out

    def describe(self) -> str:
        """How the regions were made, in words (for the provenance)."""
        return (f"fragments overlapping the gene body + {self.upstream} bp upstream of the "
                "TSS, strand-aware (Signac GeneActivity definition)")


def canonical_chrom(name: str) -> str:
    """A chromosome name without the UCSC ``chr`` prefix (``chrM``/``MT`` -> ``M``), so that
    a GENCODE/UCSC annotation matches Ensembl-style fragment files and the other way round."""
    name = str(name)
    if name.lower().startswith("chr"):
        name = name[3:]
    return "M" if name in ("MT", "M") else name


def _open_text(p: Path):
    gz = first_bytes(p, 2) == GZIP_SIGNATURE
    return gzip.open(p, "rt", encoding="utf-8", errors="replace") if gz else open(
        p, encoding="utf-8", errors="replace")


def _attributes(text: str, gff3: bool) -> dict[str, str]:
    if gff3:
        out = {}
        for part in text.strip().split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k.strip()] = v.strip()
        return out
    return dict(_GTF_ATTR.findall(text))


def read_gene_annotation(
    path: str | os.PathLike,
    *,
    upstream: int = UPSTREAM,
    biotypes: Sequence[str] | None = BIOTYPES,
    max_width: int | None = MAX_WIDTH,
) -> GeneRegions:
    """Read a GTF or GFF3 file (optionally gzipped) into one counted region per gene.

    Parameters
    ----------
    path
        A GTF (``gene_name "CD3E";``) or GFF3 (``Name=CD3E``) file. ``gene`` records are
        used; an annotation without them (transcripts/exons only) gets each gene's extent
        from its records.
    upstream
        Bases added upstream of the TSS (default 2,000, as Signac).
    biotypes
        Keep genes of these types (default protein-coding, as Signac); ``None``: all. An
        annotation without a type attribute keeps every gene.
    max_width
        Leave out genes wider than this (default 500 kb, as Signac); ``None``: no limit.

    Returns
    -------
    GeneRegions
        A gene named more than once (alternative loci) keeps its widest record.

    Raises
    ------
    InputError
        A missing file, or one without any gene record the annotation could be built from.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"Gene annotation not found: {p}. Pass a GTF or GFF3 file (e.g. "
                         f"{GENCODE_BASIC_FILE}) with --gtf / gtf=.")
    gff3 = ".gff" in p.name.lower()
    rows: list[tuple] = []
    fallback: dict[str, list] = {}
    n_lines = 0
    with _open_text(p) as fh:
        for line in fh:
            if not line or line[0] == "#":
                if line.startswith("##gff-version"):
                    gff3 = True
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 9:
                continue
            n_lines += 1
            attrs = _attributes(parts[8], gff3)
            name = next((attrs[k] for k in _NAME_KEYS if attrs.get(k)), "")
            if not name:
                continue
            gtype = next((attrs[k] for k in _TYPE_KEYS if attrs.get(k)), "")
            try:
                start, end = int(parts[3]) - 1, int(parts[4])
            except ValueError:
                continue
            if parts[2] == "gene":
                rows.append((name, parts[0], start, end, parts[6], gtype))
            elif not rows:  # no gene records (yet): each gene's extent from its records
                got = fallback.get(name)
                if got is None:
                    fallback[name] = [name, parts[0], start, end, parts[6], gtype]
                elif got[1] == parts[0]:
                    got[2], got[3] = min(got[2], start), max(got[3], end)
    if not rows:
        rows = [tuple(v) for v in fallback.values()]
    if not rows:
        raise InputError(f"{p}: no gene records with a gene name found in {n_lines} "
                         "annotation lines. Pass a GTF (attributes gene_name \"...\") or a "
                         "GFF3 (Name=...) gene annotation.")
    table = pd.DataFrame(rows, columns=["gene", "chrom", "start", "end", "strand", "gene_type"])
    return gene_regions(table, source=str(p), upstream=upstream, biotypes=biotypes,
                        max_width=max_width)


def gene_regions(table: pd.DataFrame, *, source: str = "", upstream: int = UPSTREAM,
                 biotypes: Sequence[str] | None = BIOTYPES,
                 max_width: int | None = MAX_WIDTH) -> GeneRegions:
    """Counted regions from a gene table (``gene, chrom, start, end, strand[, gene_type]``,
    0-based half-open): see :func:`read_gene_annotation` for the options."""
    if upstream < 0:
        raise InputError(f"upstream={upstream}: the bases added upstream of the TSS cannot be "
                         "negative.")
    t = table.copy()
    if "gene_type" not in t:
        t["gene_type"] = ""
    n0 = len(t)
    if biotypes is not None and (t["gene_type"] != "").any():
        t = t[t["gene_type"].isin(list(biotypes))]
    if max_width is not None:
        t = t[(t["end"] - t["start"]) <= int(max_width)]
    if t.empty:
        raise InputError(f"{source or 'the annotation'}: none of its {n0} genes is left after "
                         f"keeping biotypes {list(biotypes or [])} at most {max_width} bp wide; "
                         "pass biotypes=None or a wider max_width.")
    t = t.assign(width=t["end"] - t["start"]).sort_values("width", ascending=False,
                                                          kind="stable")
    t = t.drop_duplicates("gene").drop(columns="width")
    minus = t["strand"].to_numpy() == "-"
    t["region_start"] = np.where(minus, t["start"], np.maximum(t["start"] - upstream, 0))
    t["region_end"] = np.where(minus, t["end"] + upstream, t["end"])
    t = t.sort_values(["chrom", "region_start"], kind="stable").reset_index(drop=True)
    return GeneRegions(t, source, int(upstream))


def default_annotation_path() -> Path:
    """The annotation used when none is given: ``$CELLREASONER_GTF``, else GENCODE basic in
    the cache (downloaded with its pinned hash where this release pins one).

    Raises
    ------
    InputError
        Neither is there; the message says where to put the file.
    """
    env = os.environ.get(GTF_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise InputError(f"${GTF_ENV}={env}: no such file. Point it at a GTF/GFF3 gene "
                             "annotation.")
        return p
    from ..resources import _fetch, cache_dir

    target = cache_dir() / GENCODE_BASIC_FILE
    if target.is_file():
        return target
    if GENCODE_BASIC_SHA256 is None:
        raise InputError(
            "Gene activity needs a gene annotation (GTF/GFF3) and none was given. Download "
            f"GENCODE basic ({GENCODE_BASIC_URL}) and put it at {target}, or pass your own "
            f"annotation with --gtf PATH / gtf= / ${GTF_ENV}.")
    return _fetch(GENCODE_BASIC_URL, GENCODE_BASIC_SHA256, GENCODE_BASIC_FILE,
                  "the GENCODE basic gene annotation")


def load_regions(gtf, *, upstream: int = UPSTREAM, biotypes: Sequence[str] | None = BIOTYPES,
                 max_width: int | None = MAX_WIDTH) -> GeneRegions:
    """``gtf`` as :class:`GeneRegions`: ready regions, a path, or ``None`` for the default
    annotation (:func:`default_annotation_path`)."""
    if isinstance(gtf, GeneRegions):
        return gtf
    path = default_annotation_path() if gtf is None else gtf
    return read_gene_annotation(path, upstream=upstream, biotypes=biotypes,
                                max_width=max_width)


def overlap_pairs(starts: np.ndarray, ends: np.ndarray, r_start: np.ndarray,
                  r_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (interval, region) pair that overlaps (half-open), vectorised.

    ``starts`` must be sorted ascending; regions need not be. Returns the interval and region
    indices of each overlapping pair.
    """
    if len(starts) == 0 or len(r_start) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    longest = int((ends - starts).max())
    lo = np.searchsorted(starts, r_start - longest, side="right")
    hi = np.searchsorted(starts, r_end, side="left")
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    reg = np.repeat(np.arange(len(r_start), dtype=np.int64), n)
    offset = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    idx = np.repeat(lo, n) + offset
    keep = ends[idx] > r_start[reg]
    return idx[keep], reg[keep]
