"""Readers for real single-cell inputs, and checks that an AnnData can be annotated.

``read(path)`` turns any supported input into an :class:`~anndata.AnnData` (cells x genes):

* ``.h5ad`` (optionally ``backed="r"`` so that ``X`` stays on disk);
* Seurat ``.rds`` objects (v3/v4 ``Assay`` and v5 ``Assay5``, split layers included), read in
  pure Python with the ``rdata`` package, no R needed;
* 10x Genomics ``filtered_feature_bc_matrix.h5`` and matrix-market directories;
* dense ``.csv``/``.tsv`` tables (optionally gzipped), in either orientation.

What was read and which matrix became ``X`` is logged and recorded in
``adata.uns["cellreasoner_io"]``. Every problem with the input is reported as one
:class:`~cellreasoner.errors.InputError` that names the file and what to do.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .errors import InputError

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)

#: Key of ``adata.uns`` where :func:`read` records what it read.
UNS_KEY = "cellreasoner_io"

#: ``var`` columns searched (in this order, case-insensitively) for gene symbols.
SYMBOL_COLUMNS: tuple[str, ...] = (
    "feature_name",
    "gene_symbols",
    "gene_symbol",
    "gene_name",
    "gene_names",
    "symbol",
    "symbols",
    "gene_short_name",
    "feature_names",
    "features",
    "gene",
    "genes",
    "name",
)

_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_BARCODE_RE = re.compile(r"[ACGTN]{10,}")
_GZIP_SIGNATURE = b"\x1f\x8b"

ExpressionKind = Literal["counts", "lognorm"]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def read(
    path: str | os.PathLike,
    *,
    assay: str | None = None,
    layer: str | None = None,
    backed: bool | Literal["r"] = False,
    gene_symbols: str | None = None,
) -> AnnData:
    """Read a single-cell dataset into an AnnData (cells x genes).

    Parameters
    ----------
    path
        An ``.h5ad`` file, a Seurat ``.rds`` file, a 10x ``.h5`` file, a 10x matrix-market
        directory (or its ``matrix.mtx(.gz)``), or a dense ``.csv``/``.tsv`` (``.gz``) table.
    assay
        Seurat only: the assay to read. Default: the object's active assay.
    layer
        The matrix that becomes ``X``. Seurat: ``"data"`` or ``"counts"`` (default ``"data"``
        when present, else ``"counts"``); ``.h5ad``: a key of ``layers`` or ``"raw"``
        (default: ``X`` as stored). Not available for the other formats.
    backed
        ``.h5ad`` only: ``True`` or ``"r"`` keeps ``X`` on disk (read-only). Default ``False``.
    gene_symbols
        The ``var`` column holding gene symbols. Default: detected automatically when
        ``var_names`` are Ensembl IDs (see :func:`gene_symbols`).

    Returns
    -------
    AnnData
        With ``uns["cellreasoner_io"]`` describing the source, format and ``X``.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown format, missing assay or layer.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(
            f"Input not found: {p}. Check the path (relative paths start at {Path.cwd()})."
        )
    fmt = _detect_format(p)
    if backed and fmt != "h5ad":
        raise InputError(
            f"{p}: backed mode is only available for .h5ad files; read this {fmt} input without "
            "backed=, or convert it to .h5ad first."
        )
    if layer is not None and fmt in ("10x_h5", "10x_mtx", "csv"):
        raise InputError(
            f"{p}: layer={layer!r} does not apply to a {fmt} input (it holds one matrix)."
        )
    if assay is not None and fmt != "seurat":
        raise InputError(f"{p}: assay={assay!r} only applies to Seurat .rds objects.")

    if fmt == "h5ad":
        adata, info = _read_h5ad(p, layer=layer, backed=backed)
    elif fmt == "seurat":
        adata, info = _read_seurat(p, assay=assay, layer=layer)
    elif fmt == "10x_h5":
        adata, info = _read_10x_h5(p)
    elif fmt == "10x_mtx":
        adata, info = _read_10x_mtx(p)
    else:
        adata, info = _read_dense_table(p)

    info = {"source": str(p), "format": fmt, **info}
    symbols = _resolve_symbols(adata, gene_symbols, source=str(p))
    if symbols.column is not None:
        info["gene_symbols"] = symbols.column
        info["original_var_names"] = _use_symbols_as_var_names(adata, symbols)
    adata.uns[UNS_KEY] = info
    log.info(
        "read %s (%s): %d cells x %d genes, X = %s",
        p, fmt, adata.n_obs, adata.n_vars, info.get("x", "X"),
    )
    return adata


def _use_symbols_as_var_names(adata: AnnData, symbols: GeneSymbols) -> str:
    """Make gene symbols the ``var_names`` (as scanpy's 10x readers do); keep the IDs in var.

    Repeated symbols get scanpy's ``-1``, ``-2`` suffixes, so only their first occurrence
    matches a gene list. Returns the ``var`` column now holding the original names.
    """
    import warnings

    key = "gene_ids" if "gene_ids" not in adata.var.columns else "original_var_names"
    adata.var[key] = np.asarray(adata.var_names, dtype=str)
    adata.var_names = pd.Index(symbols.symbols)
    if symbols.n_duplicates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # anndata's note on suffixes; we log our own
            adata.var_names_make_unique()
    log.info("var_names are now the gene symbols of var[%r]; the original IDs are in var[%r]",
             symbols.column, key)
    return key


def _detect_format(p: Path) -> str:
    """The reader for ``p``: one of h5ad, seurat, 10x_h5, 10x_mtx, csv."""
    if p.is_dir():
        return "10x_mtx"
    name = p.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".rds"):
        return "seurat"
    if name.endswith((".h5", ".hdf5")):
        return "10x_h5"
    if name.endswith((".mtx", ".mtx.gz")):
        return "10x_mtx"
    if name.endswith((".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")):
        return "csv"
    raise InputError(
        f"{p}: unknown input format '{''.join(p.suffixes) or p.name}'. Supported: .h5ad, Seurat "
        ".rds, 10x .h5, a 10x matrix-market directory (matrix.mtx[.gz], features.tsv[.gz] or "
        "genes.tsv, barcodes.tsv[.gz]), and dense .csv/.tsv tables (optionally .gz)."
    )


def _first_bytes(p: Path, n: int = 8) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


# --------------------------------------------------------------------------------------------
# .h5ad
# --------------------------------------------------------------------------------------------


def _read_h5ad(
    p: Path, *, layer: str | None, backed: bool | str
) -> tuple[AnnData, dict[str, Any]]:
    import anndata as ad
    import h5py

    if backed not in (False, True, "r", None):
        raise InputError(f"{p}: backed={backed!r} is not supported; use backed='r' (read-only).")
    if backed and layer is not None:
        raise InputError(
            f"{p}: layer={layer!r} cannot replace X in backed mode; read without backed=, "
            "or keep X and pass the layer to the annotation step."
        )
    if not h5py.is_hdf5(p):
        head = _first_bytes(p, 16)
        raise InputError(
            f"{p} is not an HDF5 file, so it cannot be an .h5ad (it starts with {head!r}). "
            "Was another format renamed to .h5ad? Export it again with adata.write_h5ad()."
        )
    try:
        adata = ad.read_h5ad(p, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many types (OSError, KeyError, ...)
        raise InputError(
            f"Could not read {p} as .h5ad ({type(exc).__name__}: {exc}). The file may be "
            "truncated or corrupted (an incomplete download or copy?) or written by an "
            "incompatible tool; write it again with adata.write_h5ad()."
        ) from exc
    info: dict[str, Any] = {"x": "X", "backed": bool(backed)}
    if layer is not None:
        matrix, label = _get_matrix(adata, layer)
        if label == "raw":  # .raw has its own genes: build the AnnData around them
            adata = ad.AnnData(
                X=matrix, obs=adata.obs, var=adata.raw.var.copy(), uns=adata.uns, obsm=adata.obsm
            )
        else:
            adata.X = matrix.copy()  # not shared with the layer (in-place steps on X)
        info["x"] = label
        log.info("%s: using %s as X", p, label)
    return adata, info


# --------------------------------------------------------------------------------------------
# Seurat .rds (pure Python, through rdata)
# --------------------------------------------------------------------------------------------


def _identity(obj: Any, attrs: Any) -> Any:
    return obj


_R_TYPE_NAMES = {
    "INT": "an integer vector",
    "REAL": "a numeric vector",
    "STR": "a character vector",
    "LGL": "a logical vector",
    "VEC": "a list",
    "CPLX": "a complex vector",
    "CLO": "a function",
    "ENV": "an environment",
    "NILVALUE": "NULL",
}


class _R:
    """Navigation helpers over ``rdata``'s parsed (not yet converted) R objects."""

    def __init__(self, rdata_mod: Any, encoding: str | None, source: Path) -> None:
        self.rdata = rdata_mod
        self.types = rdata_mod.parser.RObjectType
        self.source = source
        constructors = dict(rdata_mod.conversion.DEFAULT_CLASS_MAP)
        # LogMap is a logical matrix with an S4 class: its underlying array is what we want.
        for cls in ("LogMap", "package_version", "numeric_version"):
            constructors[cls] = _identity
        self.converter = rdata_mod.conversion.SimpleConverter(
            constructors, default_encoding=encoding
        )

    def deref(self, obj: Any) -> Any:
        while obj is not None and obj.info.type == self.types.REF:
            obj = obj.referenced_object
        return obj

    def convert(self, obj: Any) -> Any:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = self.converter.convert(self.deref(obj))
        for w in caught:  # "Missing constructor for R class ..." notes from rdata
            log.debug("%s: rdata: %s", self.source, w.message)
        return value

    def dataframe(self, obj: Any, what: str) -> pd.DataFrame | None:
        """An R data.frame as pandas; columns rdata cannot convert are left out (logged)."""
        try:
            df = self.convert(obj)
        except Exception as exc:  # rdata raises NotImplementedError/TypeError on exotic columns
            log.debug("%s: %s: whole conversion failed (%s); converting by column",
                      self.source, what, exc)
            df = None
        if isinstance(df, pd.DataFrame):
            return df
        columns = self.named_list(obj)
        if not columns:
            return None
        row_names = self.attrs(obj).get("row.names")
        index = None
        if row_names is not None and self.deref(row_names).info.type == self.types.STR:
            index = pd.Index(self.strings(row_names).astype(str))
        data, skipped = {}, []
        for name, col in columns.items():
            try:
                value = self.convert(col)
                arr = value if isinstance(value, pd.Categorical) else np.asarray(value)
                if arr.ndim != 1 or (index is not None and len(arr) != len(index)):
                    raise ValueError("not a plain column")
                data[name] = arr
            except Exception:  # any failure: the column is reported as skipped below
                skipped.append(name)
        if skipped:
            log.warning("%s: %s columns %s could not be converted and are left out",
                        self.source, what, ", ".join(skipped))
        return pd.DataFrame(data, index=index)

    def attrs(self, obj: Any) -> dict[str, Any]:
        """Attributes (S4 slots) of ``obj`` as a name -> parsed object mapping."""
        out: dict[str, Any] = {}
        node = self.deref(obj).attributes
        while node is not None and node.info.type == self.types.LIST:
            name = self.convert(node.tag)
            out[str(name)] = node.value[0]
            node = self.deref(node.value[1])
        return out

    def classes(self, obj: Any) -> list[str]:
        cls = self.attrs(obj).get("class")
        if cls is None:
            return []
        return [str(c) for c in self.convert(cls)]

    def is_null(self, obj: Any) -> bool:
        return obj is None or self.deref(obj).info.type == self.types.NILVALUE

    def strings(self, obj: Any) -> np.ndarray:
        if self.is_null(obj):
            return np.array([], dtype=object)
        return np.asarray(self.convert(obj), dtype=object)

    def named_list(self, obj: Any) -> dict[str, Any]:
        """A named R list (VECSXP) as name -> parsed element."""
        obj = self.deref(obj)
        if obj.info.type != self.types.VEC:
            return {}
        names = self.attrs(obj).get("names")
        keys = [str(n) for n in self.strings(names)] if names is not None else []
        if len(keys) != len(obj.value):
            keys = [str(i) for i in range(len(obj.value))]
        return dict(zip(keys, obj.value, strict=True))

    def matrix(self, obj: Any, what: str) -> tuple[sparse.csr_matrix | np.ndarray, Any, Any]:
        """A genes x cells R matrix as (cells x genes matrix, gene names, cell names).

        Names are ``None`` when the matrix has no dimnames (Seurat v5 layers).
        """
        obj = self.deref(obj)
        classes = self.classes(obj)
        slots = self.attrs(obj)
        if obj.info.type == self.types.S4 and {"i", "p", "x", "Dim"} <= slots.keys():
            n_genes, n_cells = (int(v) for v in self.convert(slots["Dim"]))
            x = np.asarray(self.convert(slots["x"]))
            i = np.asarray(self.convert(slots["i"]), dtype=np.int64)
            p = np.asarray(self.convert(slots["p"]), dtype=np.int64)
            if x.dtype == bool:
                x = x.astype(np.float32)
            # dgCMatrix is column-compressed genes x cells: its transpose is CSR cells x genes.
            mat = sparse.csc_matrix((x, i, p), shape=(n_genes, n_cells)).T.tocsr()
            dimnames = slots.get("Dimnames")
        elif obj.info.type == self.types.S4 and {"i", "j", "x", "Dim"} <= slots.keys():
            n_genes, n_cells = (int(v) for v in self.convert(slots["Dim"]))
            mat = sparse.coo_matrix(
                (
                    np.asarray(self.convert(slots["x"])),
                    (
                        np.asarray(self.convert(slots["j"]), dtype=np.int64),
                        np.asarray(self.convert(slots["i"]), dtype=np.int64),
                    ),
                ),
                shape=(n_cells, n_genes),
            ).tocsr()
            dimnames = slots.get("Dimnames")
        elif obj.info.type in (self.types.REAL, self.types.INT, self.types.LGL) and "dim" in slots:
            arr = np.asarray(obj.value)
            dims = [int(d) for d in self.convert(slots["dim"])]
            if len(dims) != 2:
                raise InputError(f"{self.source}: {what} is not a 2-D matrix (dim = {dims}).")
            # R stores matrices column-major: reshape in Fortran order, then transpose.
            mat = np.asarray(arr.reshape(dims, order="F").T, dtype=np.float64)
            dimnames = slots.get("dimnames")
        else:
            kind = "/".join(classes) or str(obj.info.type.name)
            raise InputError(
                f"{self.source}: {what} is stored as an R '{kind}', which cannot be read without R "
                "(on-disk BPCells or DelayedArray layers need R). In R, convert it to an "
                "in-memory dgCMatrix (e.g. obj[[assay]]$counts <- as(obj[[assay]]$counts, "
                "'dgCMatrix')), saveRDS() again, and retry."
            )
        genes = cells = None
        if dimnames is not None and not self.is_null(dimnames):
            parts = self.deref(dimnames).value
            if len(parts) == 2:
                genes = None if self.is_null(parts[0]) else self.strings(parts[0])
                cells = None if self.is_null(parts[1]) else self.strings(parts[1])
        return mat, genes, cells


def _read_seurat(
    p: Path, *, assay: str | None, layer: str | None
) -> tuple[AnnData, dict[str, Any]]:
    import anndata as ad
    import rdata

    head = _first_bytes(p, 4)
    try:
        parsed = rdata.parser.parse_file(p, extension=".rds")
    except Exception as exc:  # the parser raises ValueError, EOFError, NotImplementedError...
        kind = "gzip-compressed " if head.startswith(_GZIP_SIGNATURE) else ""
        raise InputError(
            f"Could not read {p} as an R .rds file ({type(exc).__name__}: {exc}). The {kind}file "
            "is not a valid R serialisation (truncated, corrupted, or another format renamed "
            ".rds?). "
            "In R, save the Seurat object again with saveRDS(obj, 'file.rds')."
        ) from exc
    r = _R(rdata, parsed.extra.encoding, p)
    root = r.deref(parsed.object)
    classes = r.classes(root)
    if "seurat" in classes:  # Seurat v2 used a lower-case S4 class of another layout
        raise InputError(
            f"{p} holds a Seurat v2 object, which cellreasoner cannot read. Update it in R with "
            "obj <- SeuratObject::UpdateSeuratObject(obj); saveRDS(obj, 'file.rds')."
        )
    if "Seurat" not in classes:
        what = (
            f"an R object of class {'/'.join(classes)}"
            if classes
            else _R_TYPE_NAMES.get(root.info.type.name, f"an R {root.info.type.name} value")
        )
        raise InputError(
            f"{p} holds {what}, not a Seurat object. cellreasoner reads Seurat objects from .rds; "
            "for other R objects export the counts from R (e.g. as 10x mtx with "
            "DropletUtils::write10xCounts, or as .h5ad with zellkonverter/SeuratDisk)."
        )
    slots = r.attrs(root)
    assays = r.named_list(slots.get("assays"))
    if not assays:
        raise InputError(f"{p}: the Seurat object has no assays.")
    active = None
    if "active.assay" in slots and not r.is_null(slots["active.assay"]):
        values = r.strings(slots["active.assay"])
        active = str(values[0]) if len(values) else None
    chosen = assay or active or next(iter(assays))
    if chosen not in assays:
        raise InputError(
            f"{p}: the Seurat object has no assay {chosen!r}; available assays: "
            f"{', '.join(assays)}. Pass assay= (--assay) with one of them."
        )
    version = ""
    if "version" in slots and not r.is_null(slots["version"]):
        v = r.convert(slots["version"])
        if isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            version = ".".join(str(int(x)) for x in v[0])
    assay_obj = r.deref(assays[chosen])
    assay_slots = r.attrs(assay_obj)
    assay_class = "/".join(r.classes(assay_obj))
    if "layers" in assay_slots:
        matrices, genes, cells, var = _seurat_v5_assay(r, assay_slots, chosen)
    elif "counts" in assay_slots or "data" in assay_slots:
        matrices, genes, cells, var = _seurat_v3_assay(r, assay_slots, chosen)
    else:
        raise InputError(
            f"{p}: assay {chosen!r} (R class {assay_class}) holds neither 'layers' (Seurat v5) "
            "nor 'counts'/'data' slots (Seurat v3/v4); it cannot be read."
        )
    if not matrices:
        raise InputError(f"{p}: assay {chosen!r} holds no counts or data matrix.")
    if layer is None:
        layer = "data" if "data" in matrices else "counts"
    if layer not in matrices:
        raise InputError(
            f"{p}: assay {chosen!r} has no layer {layer!r}; available: "
            f"{', '.join(matrices)}. Pass layer= (--layer) with one of them."
        )
    obs = _seurat_obs(r, slots.get("meta.data"), cells, p)
    var = var.copy()
    var.index = pd.Index(genes.astype(str), name=None)
    x = matrices[layer]
    if len(matrices) > 1:
        # X must not share memory with a layer: in-place steps (sc.pp.normalize_total, log1p)
        # on X would silently rewrite layers["counts"] too.
        x = x.copy()
    adata = ad.AnnData(X=x, obs=obs, var=var)
    if len(matrices) > 1:
        for name, mat in matrices.items():
            adata.layers[name] = mat
    log.info("%s: Seurat assay %r (%s); X = the %r layer", p, chosen, assay_class, layer)
    if layer == "data" and "counts" in matrices:
        values = _sample_nonzero(matrices["data"])
        if values.size and np.array_equal(values, np.round(values)):
            log.warning(
                "%s: the 'data' layer holds integers, like counts: the object was probably not "
                "normalised in R (NormalizeData); cellreasoner treats X as counts", p,
            )
    info: dict[str, Any] = {
        "x": layer,
        "assay": chosen,
        "assay_class": assay_class,
        "layers": list(matrices),
    }
    if version:
        info["seurat_version"] = version
    return adata, info


def _seurat_v3_assay(
    r: _R, slots: dict[str, Any], assay: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, pd.DataFrame]:
    """Matrices of a Seurat v3/v4 ``Assay`` (slots ``counts`` and ``data``)."""
    matrices: dict[str, Any] = {}
    genes = cells = None
    for name in ("counts", "data"):
        if name not in slots or r.is_null(slots[name]):
            continue
        mat, g, c = r.matrix(slots[name], f"assay {assay!r} slot '{name}'")
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            continue  # Seurat keeps an empty 0 x 0 counts matrix when only data was given
        if genes is None and g is not None:
            genes, cells = g, c
        elif g is not None and (len(g) != len(genes) or len(c) != len(cells)):
            raise InputError(
                f"{r.source}: assay {assay!r} slots 'counts' and 'data' have different shapes "
                f"({len(genes)} x {len(cells)} vs {len(g)} x {len(c)}); pass layer= to pick one."
            )
        matrices[name] = mat
    if genes is None or cells is None:
        raise InputError(f"{r.source}: assay {assay!r} matrices carry no gene/cell names.")
    var = _r_dataframe(r, slots.get("meta.features"), len(genes))
    return matrices, genes, cells, var


def _seurat_v5_assay(
    r: _R, slots: dict[str, Any], assay: str
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, pd.DataFrame]:
    """Matrices of a Seurat v5 ``Assay5``, joining split layers (``counts.1``, ...)."""
    layers = r.named_list(slots["layers"])
    cell_map = r.convert(slots["cells"]) if "cells" in slots else None
    feat_map = r.convert(slots["features"]) if "features" in slots else None
    if cell_map is None or feat_map is None:
        raise InputError(f"{r.source}: Assay5 {assay!r} lacks its 'cells'/'features' maps.")
    cells = np.asarray(cell_map.coords[cell_map.dims[0]].values, dtype=object)
    genes = np.asarray(feat_map.coords[feat_map.dims[0]].values, dtype=object)
    cell_cols = [str(c) for c in cell_map.coords[cell_map.dims[1]].values]
    feat_cols = [str(c) for c in feat_map.coords[feat_map.dims[1]].values]
    cell_pos = pd.Index(cells.astype(str))
    gene_pos = pd.Index(genes.astype(str))
    matrices: dict[str, Any] = {}
    for base in ("counts", "data"):
        names = [n for n in layers if n == base or n.startswith(base + ".")]
        if not names:
            continue
        parts = []
        covered = np.zeros(len(cells), dtype=bool)
        for name in names:
            mat, g, c = r.matrix(layers[name], f"assay {assay!r} layer {name!r}")
            if c is None:
                if name not in cell_cols:
                    raise InputError(f"{r.source}: layer {name!r} has no cell names.")
                c = cells[np.asarray(cell_map.values[:, cell_cols.index(name)], dtype=bool)]
            if g is None:
                if name not in feat_cols:
                    raise InputError(f"{r.source}: layer {name!r} has no feature names.")
                g = genes[np.asarray(feat_map.values[:, feat_cols.index(name)], dtype=bool)]
            if mat.shape != (len(c), len(g)):
                raise InputError(
                    f"{r.source}: layer {name!r} is {mat.shape[1]} x {mat.shape[0]} but its "
                    f"cells/features maps name {len(g)} x {len(c)}; the object is inconsistent."
                )
            ri = cell_pos.get_indexer(pd.Index(np.asarray(c, dtype=str)))
            gi = gene_pos.get_indexer(pd.Index(np.asarray(g, dtype=str)))
            if (ri < 0).any() or (gi < 0).any():
                raise InputError(
                    f"{r.source}: layer {name!r} names cells/features the assay lacks."
                )
            covered[ri] = True
            parts.append((mat, ri, gi))
        if not covered.all():
            log.warning(
                "%s: assay %r layer(s) %s cover %d of %d cells; %r is left out",
                r.source, assay, ", ".join(names), int(covered.sum()), len(cells), base,
            )
            continue
        matrices[base] = _assemble(parts, (len(cells), len(genes)))
        if len(names) > 1:
            log.info("%s: joined split layers %s into %r", r.source, ", ".join(names), base)
    var = _r_dataframe(r, slots.get("meta.data"), len(genes))
    return matrices, genes, cells, var


def _assemble(parts: list[tuple[Any, np.ndarray, np.ndarray]], shape: tuple[int, int]) -> Any:
    """Place (matrix, cell positions, gene positions) parts into one cells x genes CSR matrix."""
    if len(parts) == 1:
        mat, ri, gi = parts[0]
        if np.array_equal(ri, np.arange(shape[0])) and np.array_equal(gi, np.arange(shape[1])):
            return mat
    rows, cols, vals = [], [], []
    for mat, ri, gi in parts:
        coo = sparse.coo_matrix(mat)
        rows.append(ri[coo.row])
        cols.append(gi[coo.col])
        vals.append(coo.data)
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )


def _r_dataframe(r: _R, obj: Any, n_rows: int) -> pd.DataFrame:
    """Convert an R data.frame (or nothing) to pandas with ``n_rows`` rows."""
    if obj is None or r.is_null(obj):
        return pd.DataFrame(index=pd.RangeIndex(n_rows))
    df = r.dataframe(obj, "feature metadata")
    if df is None or len(df) != n_rows:
        return pd.DataFrame(index=pd.RangeIndex(n_rows))
    return _clean_frame(df)


def _clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Make converted R columns AnnData-friendly (pandas string dtype -> object)."""
    df = df.copy()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.StringDtype):
            df[col] = df[col].astype(object)
    df.columns = [str(c) for c in df.columns]
    return df


def _seurat_obs(r: _R, obj: Any, cells: np.ndarray, p: Path) -> pd.DataFrame:
    """``meta.data`` as ``obs`` in the assay's cell order (factors become categoricals)."""
    cell_index = pd.Index(np.asarray(cells, dtype=str))
    if obj is None or r.is_null(obj):
        return pd.DataFrame(index=cell_index)
    meta = r.dataframe(obj, "meta.data")
    if meta is None:
        log.warning("%s: meta.data is not a data.frame; obs is left empty", p)
        return pd.DataFrame(index=cell_index)
    meta = _clean_frame(meta)
    if isinstance(meta.index, pd.RangeIndex) or meta.index.dtype.kind in "iu":
        if len(meta) != len(cell_index):
            raise InputError(
                f"{p}: meta.data has {len(meta)} rows but the assay has {len(cell_index)} cells."
            )
        meta.index = cell_index
        return meta
    meta.index = pd.Index(meta.index.astype(str))
    missing = cell_index.difference(meta.index)
    if len(missing):
        raise InputError(
            f"{p}: {len(missing)} assay cells have no meta.data row (e.g. "
            f"{', '.join(missing[:3])}); the Seurat object is inconsistent."
        )
    return meta.loc[cell_index]


# --------------------------------------------------------------------------------------------
# 10x Genomics
# --------------------------------------------------------------------------------------------


def _read_10x_h5(p: Path) -> tuple[AnnData, dict[str, Any]]:
    import h5py
    import scanpy as sc

    if not h5py.is_hdf5(p):
        raise InputError(
            f"{p} is not an HDF5 file (it starts with {_first_bytes(p, 16)!r}), so it cannot be a "
            "10x Genomics .h5 matrix. Pass the filtered_feature_bc_matrix.h5 from Cell Ranger."
        )
    try:
        with h5py.File(p, "r") as fh:
            keys = list(fh.keys())
    except OSError as exc:
        raise InputError(f"Could not open {p} as HDF5 ({exc}); the file may be truncated.") from exc
    if "X" in keys and "obs" in keys and "var" in keys:
        raise InputError(f"{p} looks like an AnnData file: rename it to .h5ad and read it again.")
    try:
        adata = sc.read_10x_h5(p)
    except Exception as exc:  # scanpy/h5py raise KeyError, OSError, ValueError...
        raise InputError(
            f"Could not read {p} as a 10x Genomics .h5 matrix ({type(exc).__name__}: {exc}). "
            f"Top-level groups found: {', '.join(keys) or 'none'}; Cell Ranger v3+ files have "
            "'matrix' with data/indices/indptr/shape/barcodes/features."
        ) from exc
    n_dup = _make_var_names_unique(adata, p)
    return adata, {"x": "counts", "duplicate_gene_names": n_dup}


def _make_var_names_unique(adata: AnnData, p: Path) -> int:
    dup = int(adata.var_names.duplicated().sum())
    if dup:
        adata.var_names_make_unique()
        log.warning(
            "%s: %d gene symbols occur more than once; later copies were renamed SYMBOL-1, ... "
            "(the original IDs are in var['gene_ids'])", p, dup,
        )
    return dup


def _find_file(d: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in (".gz", ""):
            candidate = d / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_10x_mtx(p: Path) -> tuple[AnnData, dict[str, Any]]:
    import scanpy as sc

    d = p if p.is_dir() else p.parent
    if _find_file(d, ["matrix.mtx"]) is None:
        nested = d / "filtered_feature_bc_matrix"
        if nested.is_dir():
            d = nested
    matrix = _find_file(d, ["matrix.mtx"])
    features = _find_file(d, ["features.tsv", "genes.tsv"])
    barcodes = _find_file(d, ["barcodes.tsv"])
    missing = [
        name
        for name, f in (
            ("matrix.mtx[.gz]", matrix),
            ("features.tsv[.gz] or genes.tsv", features),
            ("barcodes.tsv[.gz]", barcodes),
        )
        if f is None
    ]
    if missing:
        present = sorted(x.name for x in d.iterdir())[:10] if d.is_dir() else []
        raise InputError(
            f"{d} is not a 10x matrix-market directory: missing {', '.join(missing)} "
            f"(found: {', '.join(present) or 'nothing'})."
        )
    assert matrix is not None and features is not None and barcodes is not None
    legacy = features.name == "genes.tsv" and matrix.name == "matrix.mtx"
    modern = all(f.name.endswith(".gz") for f in (matrix, features, barcodes)) and (
        features.name.startswith("features")
    )
    try:
        if legacy or modern:
            adata = sc.read_10x_mtx(d)
        else:
            adata = _read_mtx_files(matrix, features, barcodes)
    except InputError:
        raise
    except Exception as exc:  # scanpy/scipy/pandas raise many types on malformed files
        raise InputError(
            f"Could not read the 10x matrix-market directory {d} ({type(exc).__name__}: {exc}). "
            "Check that matrix.mtx is a MatrixMarket file of genes x cells and that features "
            "and barcodes have one line per row/column."
        ) from exc
    n_dup = _make_var_names_unique(adata, d)
    return adata, {"x": "counts", "duplicate_gene_names": n_dup}


def _read_mtx_files(matrix: Path, features: Path, barcodes: Path) -> AnnData:
    """Read a 10x matrix-market triple whose compression scanpy's reader does not expect."""
    import anndata as ad
    from scipy.io import mmread

    opener = gzip.open if matrix.name.endswith(".gz") else open
    with opener(matrix, "rb") as fh:
        mat = sparse.csr_matrix(mmread(fh).T, dtype=np.float32)
    feats = pd.read_csv(features, sep="\t", header=None, dtype=str)
    cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str)[0]
    if mat.shape != (len(cells), len(feats)):
        raise InputError(
            f"{matrix.parent}: matrix.mtx is {mat.shape[1]} genes x {mat.shape[0]} cells but "
            f"{features.name} lists {len(feats)} genes and {barcodes.name} {len(cells)} barcodes."
        )
    names = feats[1] if feats.shape[1] > 1 else feats[0]
    var = pd.DataFrame({"gene_ids": feats[0].to_numpy()}, index=pd.Index(names.to_numpy()))
    if feats.shape[1] > 2:
        var["feature_types"] = feats[2].to_numpy()
    return ad.AnnData(X=mat, obs=pd.DataFrame(index=pd.Index(cells.to_numpy())), var=var)


# --------------------------------------------------------------------------------------------
# Dense tables
# --------------------------------------------------------------------------------------------


def _read_dense_table(p: Path) -> tuple[AnnData, dict[str, Any]]:
    import anndata as ad

    sep = _sniff_separator(p)
    try:
        df = pd.read_csv(p, sep=sep, index_col=0)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EOFError...
        raise InputError(
            f"Could not read {p} as a {'comma' if sep == ',' else 'tab'}-separated table "
            f"({type(exc).__name__}: {exc}). Expected a header row of names and the row names "
            "in the first column."
        ) from exc
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise InputError(
            f"{p}: the table has {df.shape[0]} rows and {df.shape[1]} value columns; expected "
            f"cells x genes (or genes x cells) with a header row and names in the first column."
        )
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise InputError(
            f"{p}: {len(bad)} column(s) are not numeric (e.g. {bad[0]!r} = "
            f"{df[bad[0]].iloc[0]!r}). Expected expression values only, with row names in the "
            f"first column{' (is this really ' + repr(sep) + '-separated?)' if len(bad) else ''}."
        )
    rows = [str(x) for x in df.index]
    cols = [str(x) for x in df.columns]
    transposed = _looks_genes_by_cells(rows, cols)
    values = df.to_numpy(dtype=np.float64)
    if transposed:
        values = values.T
        rows, cols = cols, rows
        log.info("%s: rows look like genes and columns like cells; reading the transpose", p)
    x = sparse.csr_matrix(values) if (values == 0).mean() > 0.5 else values
    adata = ad.AnnData(
        X=x, obs=pd.DataFrame(index=pd.Index(rows)), var=pd.DataFrame(index=pd.Index(cols))
    )
    orientation = "genes x cells (transposed)" if transposed else "cells x genes"
    return adata, {"x": "table values", "orientation": orientation}


def _sniff_separator(p: Path) -> str:
    """Comma or tab, from the header line (the extension decides a tie)."""
    opener = gzip.open if _first_bytes(p, 2) == _GZIP_SIGNATURE else open
    try:
        with opener(p, "rt", encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
    except (OSError, EOFError) as exc:
        raise InputError(f"Could not read {p} ({type(exc).__name__}: {exc}).") from exc
    tabs, commas = header.count("\t"), header.count(",")
    if tabs != commas:
        return "\t" if tabs > commas else ","
    return "," if p.name.lower().removesuffix(".gz").endswith(".csv") else "\t"


def _gene_score(labels: Sequence[str], known: set[str] | None) -> float:
    sample = list(labels[:500])
    if not sample:
        return 0.0
    hits = sum(
        1
        for s in sample
        if _ENSEMBL_RE.match(s) or (known is not None and s.upper() in known)
    )
    return hits / len(sample)


def _barcode_score(labels: Sequence[str]) -> float:
    sample = list(labels[:500])
    if not sample:
        return 0.0
    return sum(1 for s in sample if _BARCODE_RE.search(s.upper())) / len(sample)


def _known_genes() -> set[str] | None:
    """Gene symbols of the ranked list when a local copy is configured (no download)."""
    path = os.environ.get("CELLREASONER_GENE_LIST")
    if not path or not Path(path).is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return {line.strip().upper() for line in fh if line.strip()}


def _looks_genes_by_cells(rows: Sequence[str], cols: Sequence[str]) -> bool:
    """Whether a table's rows are genes and its columns cells (else cells x genes)."""
    known = _known_genes()
    rows_genes, cols_genes = _gene_score(rows, known), _gene_score(cols, known)
    rows_bc, cols_bc = _barcode_score(rows), _barcode_score(cols)
    if rows_genes >= 0.3 and rows_genes > cols_genes + 0.2:
        return True
    return cols_bc >= 0.5 and rows_bc < 0.2 and cols_genes < 0.3


# --------------------------------------------------------------------------------------------
# Gene symbols
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneSymbols:
    """Gene symbols of an AnnData's ``var``, as used to build cell sentences.

    Attributes
    ----------
    symbols
        One symbol per ``var`` row (the Ensembl ID where a symbol is missing).
    column
        The ``var`` column used, or ``None`` for ``var_names``.
    first
        Boolean mask, ``True`` for the first occurrence of each symbol (use these).
    n_duplicates
        How many ``var`` rows repeat an earlier symbol (and are masked out of ``first``).
    """

    symbols: np.ndarray
    column: str | None
    first: np.ndarray
    n_duplicates: int


def _is_ensembl_like(values: Sequence[Any]) -> bool:
    sample = [str(v) for v in list(values[:1000])]
    if not sample:
        return False
    return sum(1 for s in sample if _ENSEMBL_RE.match(s)) / len(sample) >= 0.5


def gene_symbols(adata: AnnData, gene_symbols: str | None = None) -> GeneSymbols:
    """Gene symbols for ``adata``'s genes, de-duplicated by first occurrence.

    When ``var_names`` are Ensembl IDs (``ENSG...``, ``ENSMUSG...``) the first ``var`` column
    of :data:`SYMBOL_COLUMNS` holding symbols is used, and logged.

    Parameters
    ----------
    adata
        The dataset.
    gene_symbols
        A ``var`` column to use (``"var_names"`` forces the index). Default ``None``: detect.

    Returns
    -------
    GeneSymbols
    """
    return _resolve_symbols(adata, gene_symbols, source=_source(adata))


def _resolve_symbols(adata: AnnData, column: str | None, source: str) -> GeneSymbols:
    var_names = np.asarray(adata.var_names, dtype=object)
    chosen: str | None = None
    if column is not None and column not in ("var_names", "index"):
        if column not in adata.var.columns:
            raise InputError(
                f"{source}: gene_symbols={column!r} is not a var column; available columns: "
                f"{', '.join(map(str, adata.var.columns)) or 'none'} (or 'var_names')."
            )
        chosen = column
    elif column is None and _is_ensembl_like(var_names):
        lower = {str(c).lower(): c for c in adata.var.columns}
        for name in SYMBOL_COLUMNS:
            col = lower.get(name)
            if col is None:
                continue
            values = adata.var[col]
            if values.dtype.kind in "fiub" or _is_ensembl_like(np.asarray(values)):
                continue
            chosen = str(col)
            break
        if chosen is None:
            log.warning(
                "%s: var_names look like Ensembl IDs (e.g. %s) and no gene-symbol column was found "
                "in var (looked for %s); cell sentences need gene symbols: pass gene_symbols=",
                source, var_names[0], ", ".join(SYMBOL_COLUMNS[:6]),
            )
        else:
            log.info("%s: var_names are Ensembl IDs; using gene symbols from var[%r]",
                     source, chosen)
    if chosen is None:
        symbols = var_names.astype(str)
    else:
        raw = adata.var[chosen].astype(object).to_numpy()
        missing = pd.isna(raw) | (pd.Series(raw).astype(str).str.strip() == "").to_numpy()
        symbols = np.where(missing, var_names, raw).astype(str)
        if missing.any():
            log.info("%s: %d genes have no symbol in var[%r]; their IDs are kept",
                     source, int(missing.sum()), chosen)
    dup = pd.Index(symbols).duplicated()
    n_dup = int(dup.sum())
    if n_dup:
        log.warning(
            "%s: %d genes repeat an earlier gene symbol (e.g. %s); only the first occurrence of "
            "each symbol is used in cell sentences", source, n_dup,
            ", ".join(pd.unique(symbols[dup])[:3]),
        )
    return GeneSymbols(symbols=symbols, column=chosen, first=~dup, n_duplicates=n_dup)


def _source(adata: AnnData) -> str:
    info = adata.uns.get(UNS_KEY) if hasattr(adata, "uns") else None
    if isinstance(info, Mapping) and "source" in info:
        return str(info["source"])
    return "the AnnData"


# --------------------------------------------------------------------------------------------
# Matrix access (in memory, sparse or backed) without densifying
# --------------------------------------------------------------------------------------------


def _layer_choices(adata: AnnData) -> str:
    names = ["X (layer=None)"] + [repr(k) for k in adata.layers]
    if adata.raw is not None:
        names.append("'raw' (adata.raw)")
    return ", ".join(names)


def _get_matrix(adata: AnnData, layer: str | None) -> tuple[Any, str]:
    """The matrix named by ``layer`` (``None``: X; ``"raw"``: ``adata.raw.X``) and its label."""
    if layer is None:
        if adata.X is None:
            raise InputError(
                f"{_source(adata)}: X is empty; pass layer= with one of: {_layer_choices(adata)}."
            )
        return adata.X, "X"
    if layer == "raw" and "raw" not in adata.layers:
        if adata.raw is None:
            raise InputError(
                f"{_source(adata)}: layer='raw' was asked for but the AnnData has no .raw; "
                f"available: {_layer_choices(adata)}."
            )
        return adata.raw.X, "raw"
    if layer not in adata.layers:
        raise InputError(
            f"{_source(adata)}: no layer {layer!r}; available: {_layer_choices(adata)}."
        )
    return adata.layers[layer], f"layers[{layer!r}]"


def _is_csc(mat: Any) -> bool:
    fmt = getattr(mat, "format", None) or getattr(mat, "format_str", None)
    return fmt == "csc"


def _blocks(mat: Any, *, budget: int | None = None, block_rows: int = 4096) -> Iterator[Any]:
    """Contiguous blocks of ``mat`` (rows, or columns for CSC), each small in memory.

    With ``budget`` (number of rows/columns), only evenly spaced blocks totalling about that
    many are returned; otherwise the whole matrix is covered.
    """
    axis = 1 if _is_csc(mat) else 0
    n = mat.shape[axis]
    starts = list(range(0, n, block_rows))
    if budget is not None and len(starts) * block_rows > budget:
        keep = max(1, budget // block_rows)
        idx = np.unique(np.linspace(0, len(starts) - 1, keep).round().astype(int))
        starts = [starts[i] for i in idx]
    for start in starts:
        stop = min(n, start + block_rows)
        yield mat[start:stop] if axis == 0 else mat[:, start:stop]


def _nonzero_values(block: Any) -> np.ndarray:
    data = np.asarray(block.data) if sparse.issparse(block) else np.asarray(block).ravel()
    return data[data != 0]


def _sample_nonzero(mat: Any, max_values: int = 2_000_000) -> np.ndarray:
    """Non-zero values of ``mat`` (all of them when few, else evenly spaced blocks)."""
    if sparse.issparse(mat):
        data = np.asarray(mat.data)
        if data.size > max_values:
            step = data.size // max_values + 1
            data = data[::step]
        return data[data != 0]
    n_cols = mat.shape[1] if not _is_csc(mat) else mat.shape[0]
    budget = max(1, max_values // max(1, n_cols))
    block_rows = max(1, min(4096, budget // 16))  # ~16 evenly spaced blocks
    parts = [_nonzero_values(b) for b in _blocks(mat, budget=budget, block_rows=block_rows)]
    return np.concatenate(parts) if parts else np.array([])


def expression_kind(adata: AnnData, layer: str | None = None) -> ExpressionKind:
    """Whether a matrix holds raw counts or log-normalised values.

    Sampled non-zero values are inspected in chunks (works on sparse and backed data without
    densifying): all non-negative integers means ``"counts"``, otherwise ``"lognorm"``.

    Parameters
    ----------
    adata
        The dataset.
    layer
        ``None`` (default) for ``X``, a key of ``layers``, or ``"raw"`` for ``adata.raw.X``.

    Returns
    -------
    "counts" or "lognorm"

    Raises
    ------
    InputError
        No such layer; negative values (scaled data); NaN or infinite values; all zeros.
    """
    mat, label = _get_matrix(adata, layer)
    values = _sample_nonzero(mat)
    where = f"{_source(adata)}: {label}"
    if values.size == 0:
        raise InputError(
            f"{where} has no non-zero values. Pass layer= with the expression matrix; "
            f"available: {_layer_choices(adata)}."
        )
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"{where} contains NaN or infinite values ({n_bad} among {values.size} sampled). "
            f"Pass layer= with raw counts or log-normalised data; available: "
            f"{_layer_choices(adata)}."
        )
    if (values < 0).any():
        raise InputError(
            f"{where} has negative values (min {values.min():.3g}): it looks scaled/centred "
            f"(sc.pp.scale or ScaleData), which cannot rank expressed genes. Pass layer= with raw "
            f"counts or log-normalised data; available: {_layer_choices(adata)}."
        )
    if np.array_equal(values, np.round(values)):
        return "counts"
    if values.max() > 50:
        log.warning(
            "%s is not integer but reaches %.3g: it may be normalised without log1p "
            "(expected log-normalised values below ~15)", where, float(values.max()),
        )
    return "lognorm"


def _row_nonzero_counts(mat: Any) -> np.ndarray:
    """Number of non-zero entries per row (cell), block by block."""
    if sparse.issparse(mat) and mat.format == "csr":
        data = np.asarray(mat.data)
        if not (data == 0).any():
            return np.diff(np.asarray(mat.indptr))
    if _is_csc(mat):
        counts = np.zeros(mat.shape[0], dtype=np.int64)
        for block in _blocks(mat):
            block = sparse.csc_matrix(block)
            nz = np.asarray(block.data) != 0
            counts += np.bincount(np.asarray(block.indices)[nz], minlength=mat.shape[0])
        return counts
    dense_rows = max(1, 16_000_000 // max(1, mat.shape[1]))  # ~16M values per dense block
    block_rows = 4096 if hasattr(mat, "format") or sparse.issparse(mat) else dense_rows
    parts = []
    for block in _blocks(mat, block_rows=min(4096, block_rows)):
        if sparse.issparse(block):
            parts.append(np.asarray((block != 0).sum(axis=1)).ravel())
        else:
            parts.append(np.count_nonzero(np.asarray(block), axis=1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def validate_for_annotation(
    adata: AnnData,
    layer: str | None = None,
    *,
    allow_empty: bool = False,
    gene_symbols: str | None = None,
    genes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check that ``adata`` can be annotated and summarise what will be used.

    Parameters
    ----------
    adata
        The dataset (in memory or backed).
    layer
        The expression matrix: ``None`` (default) for ``X``, a layer key, or ``"raw"``.
    allow_empty
        Accept cells without any expressed gene (default ``False``: an error).
    gene_symbols
        ``var`` column with gene symbols (default: detected, see :func:`gene_symbols`).
    genes
        Optional gene list (e.g. the ranked HVG list) checked with :func:`check_gene_overlap`.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``layer``, ``expression_kind``, ``empty_cells``,
        ``gene_symbols`` (column or ``None``), ``duplicate_symbols`` and, with ``genes``,
        ``genes_matched``.

    Raises
    ------
    InputError
        Duplicate cell names, empty cells, unusable matrix, or no overlap with ``genes``.
    """
    source = _source(adata)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(f"{source}: the data has {adata.n_obs} cells x {adata.n_vars} genes.")
    dup = adata.obs_names[adata.obs_names.duplicated()]
    if len(dup):
        raise InputError(
            f"{source}: {len(dup)} cell names occur more than once (e.g. "
            f"{', '.join(map(str, pd.unique(dup)[:5]))}); results are keyed by cell name. "
            "Make them unique first, e.g. adata.obs_names_make_unique()."
        )
    kind = expression_kind(adata, layer)
    mat, label = _get_matrix(adata, layer)
    if mat.shape[0] != adata.n_obs:
        raise InputError(f"{source}: {label} has {mat.shape[0]} rows for {adata.n_obs} cells.")
    nnz = _row_nonzero_counts(mat)
    empty = np.flatnonzero(nnz == 0)
    if len(empty) and not allow_empty:
        names = ", ".join(map(str, adata.obs_names[empty[:5]]))
        raise InputError(
            f"{source}: {len(empty)} of {adata.n_obs} cells have no expressed gene in {label} "
            f"(e.g. {names}); they cannot be annotated. Filter them out (sc.pp.filter_cells("
            "adata, min_genes=1)) or pass allow_empty=True to skip them."
        )
    symbols = _resolve_symbols(adata, gene_symbols, source)
    summary: dict[str, Any] = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "layer": layer,
        "matrix": label,
        "expression_kind": kind,
        "empty_cells": int(len(empty)),
        "gene_symbols": symbols.column,
        "duplicate_symbols": symbols.n_duplicates,
    }
    if genes is not None:
        summary["genes_matched"] = check_gene_overlap(adata, genes, gene_symbols=gene_symbols)[
            "n_matched"
        ]
    return summary


def check_obs_column(adata: AnnData, key: str, what: str = "Label", hint: str = "") -> None:
    """Raise an :class:`InputError` listing ``obs``'s columns unless ``key`` is one of them.

    ``what`` names the column's role in the message (``"Label"``, ``"Cluster"``, ...);
    ``hint`` is appended (e.g. how to do without the column).
    """
    if key not in adata.obs:
        columns = ", ".join(map(str, adata.obs.columns)) or "none"
        raise InputError(f"{what} column '{key}' not in obs. Available columns: {columns}."
                         + (f" {hint}" if hint else ""))


def check_gene_overlap(
    adata: AnnData,
    genes: Sequence[str] | None = None,
    *,
    gene_symbols: str | None = None,
) -> dict[str, Any]:
    """How many genes of ``genes`` the dataset has; an error when none.

    Parameters
    ----------
    adata
        The dataset.
    genes
        Gene symbols (default ``None``: the ranked gene list of the published models).
    gene_symbols
        ``var`` column with symbols (default: detected, see :func:`gene_symbols`).

    Returns
    -------
    dict
        ``n_matched``, ``n_genes`` (list size), ``n_var`` (unique dataset symbols) and
        ``examples`` (a few matched symbols).

    Raises
    ------
    InputError
        When no gene matches; the message shows examples of both sides and hints at
        Ensembl IDs or a species mismatch.
    """
    if genes is None:
        from .resources import load_gene_list

        genes = load_gene_list()
    genes = [str(g) for g in genes]
    source = _source(adata)
    symbols = _resolve_symbols(adata, gene_symbols, source)
    have = set(symbols.symbols[symbols.first].tolist())
    matched = [g for g in genes if g in have]
    result = {
        "n_matched": len(set(matched)),
        "n_genes": len(set(genes)),
        "n_var": len(have),
        "examples": matched[:5],
    }
    if matched:
        if len(set(matched)) < 0.05 * len(set(genes)):
            log.warning(
                "%s: only %d of %d genes of the gene list are in the data; cell sentences will "
                "be short", source, len(set(matched)), len(set(genes)),
            )
        return result
    data_examples = ", ".join(list(symbols.symbols[:5]))
    list_examples = ", ".join(genes[:5])
    hints = []
    if _is_ensembl_like(symbols.symbols):
        hints.append(
            "the data's genes are Ensembl IDs: add a gene-symbol column to var (e.g. "
            "'feature_name') or pass gene_symbols= naming it"
        )
    upper = {g.upper() for g in genes}
    n_case = sum(1 for s in have if s.upper() in upper)
    if n_case:
        hints.append(
            f"{n_case} genes match when ignoring case: the data may be from another species "
            "(mouse 'Cd3e' vs human 'CD3E'); the published models expect human gene symbols"
        )
    if not hints:
        hints.append(
            "check that var_names (or gene_symbols=) hold gene symbols of the same species as "
            "the gene list"
        )
    raise InputError(
        f"{source}: none of the {len(set(genes))} genes of the gene list occurs among the "
        f"data's {len(have)} genes (data: {data_examples}, ...; gene list: {list_examples}, "
        f"...). Hint: {'; '.join(hints)}."
    )


__all__ = [
    "SYMBOL_COLUMNS",
    "GeneSymbols",
    "check_gene_overlap",
    "expression_kind",
    "gene_symbols",
    "read",
    "validate_for_annotation",
]
