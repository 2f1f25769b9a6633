"""Write-back: the annotated AnnData (``.h5ad``) or the per-cell table alone (CSV, Parquet).

Every output is written to a temporary file in the target's folder and renamed into place
(:func:`cellreasoner.io.write.atomic_path`), so a killed run never leaves a half-written file;
``.h5ad`` files are written in a child process (:func:`~cellreasoner.io.write.write_isolated`),
since HDF5 can crash the process after a failed write (disk full). An AnnData opened
``backed="r"`` (a streamed ``.h5ad`` input) is written without loading its matrix: the input
file is copied as it is (X, layers, ``.raw``, ``obsm``/``obsp`` stay byte for byte) and only
``obs``, ``var`` and ``uns`` are rewritten (``obs``'s long text columns, such as a million
reasoning traces, a slice at a time: :func:`write_frame`). That copy can start before the
annotation does (:class:`CopyAhead`, what ``cellreasoner annotate`` uses): the kernel copies
the file while the reasoner uses the cores, and the write is then only ``obs``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .._spreadsheet import spreadsheet_safe
from ..errors import InputError
from ..io.write import atomic_path, temp_beside, write_isolated

if TYPE_CHECKING:
    from .result import AnnotationResult

#: Output suffixes :func:`write_result` knows.
SUFFIXES = (".h5ad", ".csv", ".parquet")


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as CSV (no index), atomically, text that a spreadsheet would run as a formula
    prefixed with ``'`` (:func:`cellreasoner._spreadsheet.spreadsheet_safe`)."""
    with atomic_path(path) as tmp:
        spreadsheet_safe(frame).to_csv(tmp, index=False)
    return Path(path)


#: Rows converted to Arrow at a time: a million traces converted at once would double the
#: memory the text already takes.
PARQUET_ROWS = 65_536


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``frame`` as Parquet (no index), atomically, :data:`PARQUET_ROWS` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = pa.Table.from_pandas(frame.iloc[:PARQUET_ROWS], preserve_index=False)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, first.schema) as writer:
        writer.write_table(first)
        for lo in range(PARQUET_ROWS, len(frame), PARQUET_ROWS):
            part = frame.iloc[lo:lo + PARQUET_ROWS]
            writer.write_table(pa.Table.from_pandas(part, schema=first.schema,
                                                    preserve_index=False))
    return Path(path)


class CopyAhead:
    """The ``.h5ad`` file ``source`` copied, in a background thread, to a new temporary file
    beside ``path`` (the output), started before the annotation so that the copy and the
    reasoning overlap; :func:`write_h5ad` then renames the copy into place instead of copying
    the file again. Use as a context manager: the copy is removed on leaving unless taken.

    Parameters
    ----------
    source
        The input ``.h5ad`` (to be read ``backed="r"``).
    path
        The output ``.h5ad``.
    """

    def __init__(self, source: str | os.PathLike, path: str | os.PathLike) -> None:
        self.source = Path(source)
        self._stat = os.stat(self.source)
        self.tmp: Path | None = temp_beside(path, "ahead")  # with the output's mode
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._copy, name="cellreasoner copy-ahead",
                                        daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        try:
            shutil.copyfile(self.source, self.tmp)
        except OSError as exc:  # write_h5ad copies again (and reports its own error)
            self.error = exc

    def take(self, source: str | os.PathLike) -> Path | None:
        """Wait for the copy; the copied file if it is of ``source`` as it was when the copy
        started (the same file, unchanged), else ``None`` (the caller copies it itself)."""
        self._thread.join()
        if self.tmp is None or self.error is not None:
            return None
        try:
            now = os.stat(source)
        except OSError:
            return None
        same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (
            self._stat.st_dev, self._stat.st_ino, self._stat.st_size, self._stat.st_mtime_ns)
        if not same:
            return None
        copy, self.tmp = self.tmp, None
        return copy

    def close(self) -> None:
        """Remove the copy unless :meth:`take` took it (waits for the copy to stop)."""
        self._thread.join()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def __enter__(self) -> CopyAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_h5ad(adata, path: str | os.PathLike, *, ahead: CopyAhead | None = None) -> Path:
    """``adata`` as ``.h5ad``, atomically; a backed AnnData without reading its matrix (from
    ``ahead``'s copy of its file when it holds one)."""
    with atomic_path(path) as tmp:
        if getattr(adata, "isbacked", False):
            copy = ahead.take(adata.filename) if ahead is not None else None
            if copy is not None:  # the copy becomes the temporary file, as if copied now
                os.replace(copy, tmp)
            write_isolated(lambda: _write_backed(adata, Path(tmp), copied=copy is not None),
                           path)
        else:
            # labels are already categorical; free text (reasoning) must not become categories
            write_isolated(lambda: adata.write_h5ad(tmp, convert_strings_to_categoricals=False),
                           path)
    return Path(path)


def _write_backed(adata, tmp: Path, *, copied: bool = False) -> None:
    """Copy the backing file (unless ``copied``: ``tmp`` is already its copy), then replace
    its ``obs``, ``var`` and ``uns``."""
    import h5py
    from anndata.io import write_elem

    source = Path(adata.filename)
    if source.resolve() == tmp.resolve():  # pragma: no cover - atomic_path never does this
        raise InputError(f"{source}: cannot write a backed AnnData onto its own file.")
    if not copied:
        shutil.copyfile(source, tmp)
    with h5py.File(tmp, "r+") as f:
        for key, value in (("obs", adata.obs), ("var", adata.var), ("uns", dict(adata.uns))):
            if key in f:
                del f[key]
            (write_frame if isinstance(value, pd.DataFrame) else write_elem)(f, key, value)


#: Rows of a text column written to an ``.h5ad`` at a time: h5py converts the text it is given
#: into one buffer (a million reasoning traces at once: ~600 MB).
H5AD_TEXT_ROWS = 65_536


def write_frame(group, key: str, frame: pd.DataFrame) -> None:
    """``frame`` into ``group[key]`` as anndata's ``write_elem`` writes a data frame, with its
    long text columns and index (all ``str``, over :data:`H5AD_TEXT_ROWS` rows) written a
    slice at a time in the same encoding (``string-array`` 0.2.0)."""
    from anndata.io import write_elem

    n = len(frame)
    if n <= H5AD_TEXT_ROWS:
        write_elem(group, key, frame)
        return
    text = [c for c in frame.columns if _all_text(frame[c])]
    rest = frame.drop(columns=text)
    sliced_index = _all_text(frame.index)
    if sliced_index:  # a placeholder index of the right length, replaced below
        rest.index = pd.RangeIndex(n, name=frame.index.name)
    write_elem(group, key, rest)
    out = group[key]
    if sliced_index:
        name = out.attrs["_index"]
        del out[name]
        _write_text(out, name, frame.index.to_numpy())
    for c in text:
        _write_text(out, c, frame[c].to_numpy())
    if text:
        out.attrs["column-order"] = np.array(list(frame.columns), dtype=object)


def _all_text(values) -> bool:
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=False) == "string"


def _write_text(group, name: str, values: np.ndarray) -> None:
    """``values`` (``str`` objects) as an anndata ``string-array``, a slice at a time."""
    import h5py

    ds = group.create_dataset(name, shape=(len(values),), dtype=h5py.string_dtype())
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"
    for lo in range(0, len(values), H5AD_TEXT_ROWS):
        ds[lo:lo + H5AD_TEXT_ROWS] = values[lo:lo + H5AD_TEXT_ROWS]


def write_result(result: AnnotationResult, path: str | os.PathLike, *,
                 cellxgene: bool = False, ahead: CopyAhead | None = None) -> Path:
    """Write ``result`` where ``path``'s suffix says (see :data:`SUFFIXES`).

    ``.h5ad``: the annotated AnnData (with ``cellxgene``, also
    ``obs["cell_type_ontology_term_id"]``; ``ahead``: a :class:`CopyAhead` of the input file
    started before the annotation); ``.csv`` / ``.parquet``: the per-cell table in the
    upstream CellReasoner layout, without the matrix.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"Output {p}: use a .h5ad (annotated AnnData), .csv or .parquet path.")
    if cellxgene and result.adata is not None:
        result.to_cellxgene()
    if suffix == ".csv":
        return result.to_csv(p)
    if suffix == ".parquet":
        return result.to_parquet(p)
    if result.adata is None:
        raise InputError(f"Output {p}: this result holds no AnnData; write .csv or .parquet.")
    return write_h5ad(result.adata, p, ahead=ahead)
