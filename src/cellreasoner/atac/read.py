"""Every ATAC input layout -> a log-normalised gene-activity AnnData, ready to annotate.

Layouts (detected by :func:`atac_layout`): a 10x fragment file, a peak-by-cell matrix (10x
``.h5`` / matrix-market folder, or an ``.h5ad`` whose var names are peaks), an existing
gene-activity matrix (Signac ``GeneActivity``, ArchR ``GeneScoreMatrix`` exported, a snapATAC2
gene matrix: var names are genes, used as is), a MuData ``.h5mu`` with an ``atac`` modality,
and a snapATAC2 ``.h5ad`` (fragments in ``obsm``: counted by snapATAC2, extra ``[atac]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..io._detect import GZIP_SIGNATURE, UNS_KEY, display_path, first_bytes
from .genes import BIOTYPES, MAX_WIDTH, UPSTREAM, GeneRegions, load_regions
from .peaks import peak_fraction, peaks_to_genes

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

#: ``uns[UNS_KEY]["modality"]`` of an ATAC input: the annotation engine reads it.
MODALITY = "atac"
#: How the activity is normalised before annotation (as RNA).
NORMALISATION = "counts per 10k, log1p"
#: Obsm keys where snapATAC2 keeps a cell's fragments.
SNAP_FRAGMENT_KEYS = ("fragment_paired", "fragment_single")
_FRAGMENT_SUFFIXES = (".tsv.gz", ".tsv", ".bed.gz", ".bed", ".tsv.bgz")


def is_fragment_file(p: Path) -> bool:
    """A 10x fragment file by its name (``*fragments*.tsv[.gz]``)."""
    name = p.name.lower()
    return "fragments" in name and name.endswith(_FRAGMENT_SUFFIXES)


def _h5_header(p: Path, *, snap: bool = False, peak_types: bool = False
               ) -> tuple[list[str], bool, bool]:
    """What the layout needs from an HDF5 file, read in one open: the first 2,000 var names
    (``.h5ad`` ``var`` or 10x ``matrix/features/name``), whether snapATAC2 fragments are in
    ``obsm`` (``snap``), and whether a 10x ``.h5`` has ``Peaks`` features (``peak_types``: a
    Multiome ARC matrix holds genes and peaks). An unreadable file: ``([], False, False)``."""
    import h5py

    from ..matrix import _h5_strings, _h5ad_index

    try:
        with h5py.File(p, "r") as f:
            fragments = snap and any(f"obsm/{k}" in f for k in SNAP_FRAGMENT_KEYS)
            names: list[str] = []
            try:
                if "var" in f:
                    names = [str(x) for x in _h5ad_index(f["var"])[:2000]]
                elif "matrix/features/name" in f:
                    names = [str(x) for x in _h5_strings(f["matrix/features/name"][:2000])]
            except KeyError:
                names = []
            ds = f.get("matrix/features/feature_type") if peak_types else None
            peaks = ds is not None and b"Peaks" in set(ds[:].tolist())
            return names, fragments, peaks
    except OSError:
        return [], False, False


def atac_layout(p: Path, *, atac: bool = False) -> str | None:
    """The ATAC layout of the file ``p``, or ``None`` when it is not an ATAC input.

    One of ``fragments``, ``h5mu``, ``snapatac2``, ``peaks_h5ad``, ``peaks_10x_h5``,
    ``peaks_mtx``. A gene-activity ``.h5ad`` reads like RNA, so it is ``None`` here (pass it
    to :func:`read_atac` to have it recorded as ATAC). ``atac=True`` (the caller asked for
    ATAC) also takes the peaks of a 10x Multiome ``.h5`` that holds genes first.
    """
    name = p.name.lower()
    if p.is_file() and is_fragment_file(p):
        return "fragments"
    if name.endswith(".h5mu"):
        return "h5mu"
    if p.is_dir():
        d = p / "filtered_peak_bc_matrix" if (p / "filtered_peak_bc_matrix").is_dir() else p
        if (d / "peaks.bed").is_file() or (d / "peaks.bed.gz").is_file():
            return "peaks_mtx"
        return None
    if name.endswith(".h5ad") and p.is_file():
        names, fragments, _ = _h5_header(p, snap=True)
        if fragments:
            return "snapatac2"
        return "peaks_h5ad" if peak_fraction(names) > 0.5 else None
    if name.endswith((".h5", ".hdf5")) and p.is_file():
        names, _, peaks = _h5_header(p, peak_types=atac)
        if peak_fraction(names) > 0.5 or peaks:
            return "peaks_10x_h5"
    return None


def read_atac(
    data: str | os.PathLike | AnnData,
    *,
    gtf: str | os.PathLike | GeneRegions | None = None,
    barcodes: str | os.PathLike | Sequence[str] | None = None,
    upstream: int = UPSTREAM,
    biotypes: Sequence[str] | None = BIOTYPES,
    max_width: int | None = MAX_WIDTH,
    method: str = "native",
    chunk_lines: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AnnData:
    """Read scATAC-seq data as log-normalised gene activity (cells x genes), ready to annotate.

    Parameters
    ----------
    data
        A 10x ``fragments.tsv.gz``; a peak-by-cell matrix (10x ``filtered_peak_bc_matrix.h5``
        or folder, or an ``.h5ad`` with var names ``chr:start-end`` / ``chr-start-end``); a
        gene-activity matrix (Signac, ArchR, snapATAC2 ``.h5ad``; used as is); a MuData
        ``.h5mu`` (its ``atac`` modality); a snapATAC2 ``.h5ad`` with fragments; or an AnnData
        of any of those matrices.
    gtf
        Gene annotation (GTF/GFF3 path, or ready regions). Default: ``$CELLREASONER_GTF``,
        else GENCODE basic in the cache. Not needed for a gene-activity matrix.
    barcodes
        Fragment files: the cells (a list, a file with one barcode a line, or Cell Ranger's
        ``singlecell.csv`` / ``per_barcode_metrics.csv``). Default: the cell table beside the
        fragment file.
    upstream, biotypes, max_width
        The gene regions (Signac ``GeneActivity`` defaults: 2 kb upstream of the TSS,
        protein-coding genes at most 500 kb wide).
    method
        ``"native"`` (default) or ``"snapatac2"`` (``snap.pp.make_gene_matrix``, extra
        ``[atac]``; fragment inputs only).
    chunk_lines
        Fragment lines parsed at a time (default 2,000,000): the memory bound.
    progress
        Called with the number of fragment lines read after each chunk.

    Returns
    -------
    AnnData
        ``X`` = log1p(counts per 10k) gene activity, ``layers["counts"]`` the activity counts,
        ``uns["cellreasoner_io"]`` records ``modality="atac"``, the input layout and how the
        activity was computed (annotation, region definition, normalisation).

    Raises
    ------
    InputError
        A missing or unreadable input, no annotation, no cell barcodes, nothing overlapping.
    """
    if method not in ("native", "snapatac2"):
        raise InputError(f"method={method!r}: use 'native' or 'snapatac2'.")
    region_opts = {"upstream": upstream, "biotypes": biotypes, "max_width": max_width}
    if hasattr(data, "obs") and hasattr(data, "var"):
        return _from_anndata(data, "anndata", "AnnData", gtf, region_opts)
    p = Path(data).expanduser()
    if not p.exists():
        raise InputError(f"ATAC input not found: {p}. Pass a fragments.tsv.gz, a peak matrix "
                         "(.h5 / folder / .h5ad), a gene-activity .h5ad, or a MuData .h5mu.")
    layout = atac_layout(p, atac=True)
    if layout is None and _looks_like_fragments(p):  # a fragment file by another name
        layout = "fragments"
    where = display_path(p)
    if layout == "fragments":
        return _from_fragments(p, gtf, barcodes, region_opts, method, chunk_lines, progress)
    if method == "snapatac2" and layout != "snapatac2":
        raise InputError(f"{where}: method='snapatac2' counts fragments; this {layout or 'input'}"
                         " holds a matrix (use the native method).")
    if layout == "snapatac2":
        from .snap import snap_gene_matrix

        counts, obs_names, genes, info = snap_gene_matrix(p, load_regions(gtf, **region_opts))
        return _finish(counts, obs_names, genes, {"source": where, "input": "snapatac2",
                                                   **info})
    if layout == "h5mu":
        return _from_anndata(_read_h5mu_atac(p), "h5mu", where, gtf, region_opts)
    if layout == "peaks_10x_h5":
        import scanpy as sc

        try:
            adata = sc.read_10x_h5(p, gex_only=False)
        except Exception as exc:  # scanpy/h5py raise many types
            raise InputError(f"Could not read {where} as a 10x peak matrix ({type(exc).__name__}"
                             f": {exc}).") from exc
        return _from_anndata(_only_peaks(adata), "peaks_10x_h5", where, gtf, region_opts)
    if layout == "peaks_mtx":
        return _from_anndata(_read_peak_mtx(p), "peaks_mtx", where, gtf, region_opts)
    from ..io import read

    adata = read(p) if layout is None else _read_plain_h5ad(p)
    return _from_anndata(adata, layout or "gene_activity", where, gtf, region_opts)


def _looks_like_fragments(p: Path) -> bool:
    """Whether the first data line of a text file reads ``chrom, start, end, barcode, ...``."""
    import gzip

    if not p.is_file() or not p.name.lower().endswith(_FRAGMENT_SUFFIXES):
        return False
    try:
        gz = first_bytes(p, 2) == GZIP_SIGNATURE
        with (gzip.open(p, "rt") if gz else open(p)) as fh:
            for _, line in zip(range(1000), fh, strict=False):
                if line.startswith("#"):
                    continue
                f = line.rstrip("\n").split("\t")
                return len(f) >= 4 and f[1].isdigit() and f[2].isdigit()
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    return False


def _read_plain_h5ad(p: Path) -> AnnData:
    from ..io._h5ad import read_h5ad

    return read_h5ad(p, layer=None, backed=False)[0]


def _read_h5mu_atac(p: Path) -> AnnData:
    """The ``atac`` (or ``peaks``) modality of a MuData file, read with anndata (no mudata
    needed to read)."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(p, "r") as f:
            mods = list(f["mod"].keys()) if "mod" in f else []
            name = next((m for m in ("atac", "peaks", "ATAC") if m in mods), None)
            if name is None:
                raise InputError(f"{p}: the MuData file has no 'atac' modality (modalities: "
                                 f"{', '.join(mods) or 'none'}).")
            return read_elem(f[f"mod/{name}"])
    except OSError as exc:
        raise InputError(f"Could not open {p} as a MuData .h5mu file ({exc}).") from exc


def _only_peaks(adata: AnnData) -> AnnData:
    """The peak features of a 10x matrix (Multiome ARC files hold genes and peaks)."""
    ft = adata.var.get("feature_types")
    if ft is not None and (ft == "Peaks").any():
        adata = adata[:, (ft == "Peaks").to_numpy()].copy()
    return adata


def _read_peak_mtx(p: Path) -> AnnData:
    """A Cell Ranger ATAC ``filtered_peak_bc_matrix/`` (matrix.mtx, peaks.bed, barcodes.tsv)."""
    import anndata as ad
    from scipy.io import mmread

    from ..io._tenx import _find_file

    d = p / "filtered_peak_bc_matrix" if (p / "filtered_peak_bc_matrix").is_dir() else p
    matrix, peaks, cells = (_find_file(d, [s]) for s in ("matrix.mtx", "peaks.bed",
                                                         "barcodes.tsv"))
    if matrix is None or peaks is None or cells is None:
        raise InputError(f"{d}: a peak matrix folder needs matrix.mtx, peaks.bed and "
                         "barcodes.tsv (optionally .gz).")
    try:
        mat = sp.csr_matrix(mmread(str(matrix)).T, dtype=np.float32)
        bed = pd.read_csv(peaks, sep="\t", header=None, dtype={0: str}, comment="#")
        bc = pd.read_csv(cells, sep="\t", header=None, dtype=str)[0]
    except Exception as exc:  # scipy/pandas raise many types on malformed files
        raise InputError(f"Could not read the peak matrix folder {d} ({type(exc).__name__}: "
                         f"{exc}).") from exc
    names = bed[0] + ":" + bed[1].astype(str) + "-" + bed[2].astype(str)
    if mat.shape != (len(bc), len(names)):
        raise InputError(f"{d}: matrix.mtx is {mat.shape[1]} peaks x {mat.shape[0]} cells but "
                         f"peaks.bed has {len(names)} and barcodes.tsv {len(bc)} lines.")
    return ad.AnnData(X=mat, obs=pd.DataFrame(index=pd.Index(bc.to_numpy())),
                      var=pd.DataFrame(index=pd.Index(names.to_numpy())))


def _counts_matrix(adata: AnnData) -> tuple[Any, str]:
    """The matrix holding counts: ``layers["counts"]`` when there is one, else ``X``."""
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def _from_anndata(adata: AnnData, layout: str, where: str, gtf, region_opts) -> AnnData:
    """Peaks -> gene activity; gene activity as is (normalised like RNA when it is not)."""
    names = [str(v) for v in adata.var_names]
    X, label = _counts_matrix(adata)
    info: dict[str, Any] = {"source": where, "input": layout}
    if peak_fraction(names) > 0.5:
        regions = load_regions(gtf, **region_opts)
        counts, summary = peaks_to_genes(X, names, regions, where)
        info.update(summary, annotation=regions.source, genes=len(regions),
                    gene_activity=regions.describe().replace("fragments", "peak counts"),
                    method="native")
        return _finish(counts, adata.obs_names, regions.genes, info, obs=adata.obs)
    info["input"] = "gene_activity" if layout in ("anndata", "gene_activity") else layout
    info["gene_activity"] = f"given ({where}, {label}), used as is"
    return _finish(X, adata.obs_names, names, info, obs=adata.obs, given=True)


def _from_fragments(p: Path, gtf, barcodes, region_opts, method: str,
                    chunk_lines: int | None, progress) -> AnnData:
    from .fragments import CHUNK_LINES, cell_barcodes, count_fragments

    regions = load_regions(gtf, **region_opts)
    cells, cells_from = cell_barcodes(barcodes, p)
    if method == "snapatac2":
        from .snap import snap_fragment_matrix

        counts, summary = snap_fragment_matrix(p, regions, cells)
        extra: dict[str, np.ndarray] = {}
    else:
        counts, extra, summary = count_fragments(p, regions, cells,
                                                 chunk_lines=chunk_lines or CHUNK_LINES,
                                                 progress=progress)
    info = {"source": display_path(p), "input": "fragments", "cells_from": cells_from,
            "annotation": regions.source, "genes": len(regions),
            "gene_activity": regions.describe(), "method": method, **summary}
    return _finish(counts, cells, regions.genes, info, obs=pd.DataFrame(extra, index=cells))


def _finish(counts, obs_names, genes, info: dict, *, obs: pd.DataFrame | None = None,
            given: bool = False) -> AnnData:
    """The annotatable AnnData: log1p CP10k gene activity in ``X``, counts in a layer."""
    import anndata as ad

    from ..checks import log_normalize, looks_like_counts

    X = sp.csr_matrix(counts, dtype=np.float32)
    if X.shape[0] == 0 or X.nnz == 0:
        raise InputError(f"{info['source']}: the gene activity is empty (no cell has any "
                         "count); check the barcodes and the annotation's genome build.")
    layers = {}
    if given and not looks_like_counts(X) and float(X.max()) <= 50:
        norm = "as given (already log-normalised)"
        data = X
    else:  # counts, or scores scaled per cell (ArchR): normalised like RNA
        norm = NORMALISATION
        data = log_normalize(X)
        layers["counts"] = X
    obs_df = pd.DataFrame(index=pd.Index([str(o) for o in obs_names]))
    if obs is not None:
        obs_df = obs.copy()
        obs_df.index = obs_df.index.astype(str)
    adata = ad.AnnData(X=data, obs=obs_df, var=pd.DataFrame(index=pd.Index(list(map(str, genes)))),
                       layers=layers)
    if adata.var_names.duplicated().any():
        adata.var_names_make_unique()
    info = {**info, "format": f"atac_{info['input']}", "x": f"gene activity ({norm})",
            "modality": MODALITY, "normalisation": norm}
    adata.uns[UNS_KEY] = {k: (v if isinstance(v, str | int | float | bool) else str(v))
                          for k, v in info.items()}
    log.info("ATAC %s: %d cells x %d genes of gene activity (%s)", info["input"], adata.n_obs,
             adata.n_vars, info["gene_activity"])
    return adata


def input_modality(adata) -> str:
    """``"atac"`` for gene activity read by :func:`read_atac`, else ``"rna"``."""
    from collections.abc import Mapping

    info = adata.uns.get(UNS_KEY) if hasattr(adata, "uns") else None
    if isinstance(info, Mapping) and str(info.get("modality", "")) == MODALITY:
        return MODALITY
    return "rna"


#: What an annotation run's provenance repeats from an ATAC input's read record.
_PROVENANCE_KEYS = ("input", "source", "gene_activity", "annotation", "genes", "method",
                    "normalisation", "cells_from", "fragment_lines", "fragments_in_cells",
                    "peaks", "peaks_in_genes", "snapatac2")


def atac_provenance(read_info) -> dict:
    """``{"modality": "atac", "atac": {...}}`` for an ATAC input's read record (how the
    activity was computed), ``{}`` for anything else (an RNA run's provenance is unchanged)."""
    from collections.abc import Mapping

    if not isinstance(read_info, Mapping) or str(read_info.get("modality", "")) != MODALITY:
        return {}
    atac = {k: read_info[k] for k in _PROVENANCE_KEYS if k in read_info}
    return {"modality": MODALITY, "atac": atac}
