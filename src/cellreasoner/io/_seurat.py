"""Seurat ``.rds`` objects read in pure Python with ``rdata`` (no R needed).

v3/v4 ``Assay`` and v5 ``Assay5`` (split layers joined) are supported; ``meta.data`` becomes
``obs`` and the assay's feature metadata ``var``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import InputError
from ._detect import GZIP_SIGNATURE, first_bytes

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)


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


def _parse_rds(p: Path) -> tuple[_R, Any]:
    """Parse ``p`` with rdata; the navigation helpers and the root object (a Seurat object)."""
    import rdata

    head = first_bytes(p, 4)
    try:
        parsed = rdata.parser.parse_file(p, extension=".rds")
    except Exception as exc:  # the parser raises ValueError, EOFError, NotImplementedError...
        kind = "gzip-compressed " if head.startswith(GZIP_SIGNATURE) else ""
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
    return r, root


#: ``assay="upstream"``: the rule of upstream CellReasoner's ``s01.process_rds.R``.
UPSTREAM_ASSAY = "upstream"


def _pick_assay(r: _R, p: Path, slots: dict[str, Any], assay: str | None) -> tuple[str, Any]:
    """The assay to read and its object: ``assay``; ``"upstream"`` (``integrated`` when
    present, else ``RNA``, as upstream's ``s01.process_rds.R``); else the active one, else
    the first. When the object holds several assays and none was named, the choice is
    logged as a warning, since prompts differ by assay."""
    assays = r.named_list(slots.get("assays"))
    if not assays:
        raise InputError(f"{p}: the Seurat object has no assays.")
    active = None
    if "active.assay" in slots and not r.is_null(slots["active.assay"]):
        values = r.strings(slots["active.assay"])
        active = str(values[0]) if len(values) else None
    if assay == UPSTREAM_ASSAY:
        chosen = "integrated" if "integrated" in assays else "RNA"
        if chosen not in assays:
            raise InputError(
                f"{p}: assay='upstream' reads 'integrated', else 'RNA' (as upstream "
                f"CellReasoner), but the object has neither; available assays: "
                f"{', '.join(assays)}. Pass assay= (--assay) with one of them.")
    else:
        chosen = assay or active or next(iter(assays))
    if chosen not in assays:
        raise InputError(
            f"{p}: the Seurat object has no assay {chosen!r}; available assays: "
            f"{', '.join(assays)}. Pass assay= (--assay) with one of them, or 'upstream'."
        )
    if assay is None and len(assays) > 1:
        log.warning("%s: %d assays (%s); reading the active assay %r. Pass assay= (--assay) "
                    "to choose, or 'upstream' for CellReasoner's rule (integrated, else RNA).",
                    p, len(assays), ", ".join(assays), chosen)
    return chosen, r.deref(assays[chosen])


def _seurat_version(r: _R, slots: dict[str, Any]) -> str:
    """The SeuratObject version that saved the object (``""`` when not recorded)."""
    if "version" in slots and not r.is_null(slots["version"]):
        v = r.convert(slots["version"])
        if isinstance(v, list) and v and isinstance(v[0], np.ndarray):
            return ".".join(str(int(x)) for x in v[0])
    return ""


def read_seurat(
    p: Path, *, assay: str | None, layer: str | None
) -> tuple[AnnData, dict[str, Any]]:
    """Read the Seurat object in ``p``: (AnnData, what was read for ``uns``)."""
    import anndata as ad

    from ..checks import looks_like_counts
    from ..matrix import sample_nonzero

    r, root = _parse_rds(p)
    slots = r.attrs(root)
    chosen, assay_obj = _pick_assay(r, p, slots, assay)
    version = _seurat_version(r, slots)
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
    data_is_counts = layer == "data" and "counts" in matrices and looks_like_counts(
        sample_nonzero(matrices["data"]), max_values=None
    )
    if data_is_counts:
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

