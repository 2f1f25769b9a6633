"""What an input is: its format (from its path), its first bytes, the file an AnnData came from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from anndata import AnnData

#: Key of ``adata.uns`` where :func:`cellreasoner.io.read` records what it read.
UNS_KEY = "cellreasoner_io"

#: The first two bytes of a gzip stream.
GZIP_SIGNATURE = b"\x1f\x8b"


def detect_format(p: Path) -> str:
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


def display_path(p: str | os.PathLike) -> str:
    """``p`` as text that can be recorded anywhere (HDF5, JSON, SQLite): a name with bytes
    that are not UTF-8 (e.g. ``\\xff`` on Linux) keeps them as ``\\xff`` escapes."""
    return os.fsencode(p).decode("utf-8", "backslashreplace")


def first_bytes(p: Path, n: int = 8) -> bytes:
    """The first ``n`` bytes of the file ``p`` (for messages and sniffing)."""
    with open(p, "rb") as fh:
        return fh.read(n)


def source_name(adata: AnnData) -> str:
    """The file ``adata`` was read from (as :func:`~cellreasoner.io.read` recorded it), for
    messages; ``"the AnnData"`` when it was not read by cellreasoner."""
    info = adata.uns.get(UNS_KEY) if hasattr(adata, "uns") else None
    if isinstance(info, Mapping) and "source" in info:
        return str(info["source"])
    return "the AnnData"
