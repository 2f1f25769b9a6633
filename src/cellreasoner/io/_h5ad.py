"""``.h5ad`` files (anndata's own format), optionally backed so that ``X`` stays on disk."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..matrix import resolve_matrix
from ._detect import first_bytes

if TYPE_CHECKING:
    from anndata import AnnData

log = logging.getLogger(__name__)


def read_h5ad(
    p: Path, *, layer: str | None, backed: bool | str
) -> tuple[AnnData, dict[str, Any]]:
    """Read ``p``: (AnnData, what was read for ``uns``); ``layer`` replaces ``X``."""
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
        head = first_bytes(p, 16)
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
        matrix, label = resolve_matrix(adata, layer)
        if label == "raw":  # .raw has its own genes: build the AnnData around them
            adata = ad.AnnData(
                X=matrix, obs=adata.obs, var=adata.raw.var.copy(), uns=adata.uns, obsm=adata.obsm
            )
        else:
            adata.X = matrix.copy()  # not shared with the layer (in-place steps on X)
        info["x"] = label
        log.info("%s: using %s as X", p, label)
    return adata, info

