"""Upstream exports and the compact form: JSON / JSONL writers, Arrow / Parquet write + read.

The JSON writer is byte-identical to upstream ``s02.build_dataset.py`` (``json.dump(records,
indent=4)``); the compact Arrow IPC / Parquet files keep per cell the vocabulary positions
(``list<uint16>``) with the vocabulary in the schema metadata. All writers stream chunks and
write atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.write import atomic_path
from ..prompts import instruction_for
from .core import CellSentences

__all__ = [
    "iter_arrow",
    "iter_parquet",
    "read_compact",
    "write_arrow",
    "write_jsonl",
    "write_parquet",
    "write_upstream_json",
]


def _json_record_block(part: CellSentences, instruction_json: bytes, with_output: bool,
                       first: bool) -> tuple[bytes, bool]:
    """The indent=4 JSON bytes of a chunk's records (``json.dump(list, indent=4)`` layout)."""
    dumps = json.dumps
    buf, off = part.render(json_escaped=True)
    head_first, head_next = b"[\n    {\n", b",\n    {\n"
    instr = b'        "instruction": ' + instruction_json + b',\n        "input": "'
    labels = part.labels if with_output else None
    out = []
    for i in range(len(part)):
        out.append(head_first if first else head_next)
        first = False
        out.append(b'        "cell_name": ' + dumps(str(part.cell_names[i])).encode() + b",\n")
        out.append(instr)
        out.append(buf[off[i] : off[i + 1]])
        if labels is not None and labels[i] is not None:
            out.append(b'",\n        "output": ' + dumps(str(labels[i])).encode() + b"\n    }")
        else:
            out.append(b'"\n    }')
    return b"".join(out), first


def write_upstream_json(parts: Iterable[CellSentences], path: str | os.PathLike, *,
                        reasoning: bool = False, include_output: bool | None = None) -> Path:
    """Stream chunks to the upstream CellReasoner JSON (a list of records, indent=4)."""
    instruction_json = json.dumps(instruction_for(reasoning)).encode()
    first = True
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        for part in parts:
            with_output = part.labels is not None if include_output is None else include_output
            text, first = _json_record_block(part, instruction_json, with_output, first)
            fh.write(text)
        fh.write(b"[]" if first else b"\n]")
    return Path(path)


def write_jsonl(parts: Iterable[CellSentences], path: str | os.PathLike, *,
                reasoning: bool = False) -> Path:
    """Stream chunks to JSON Lines, one upstream record per line."""
    with atomic_path(path) as tmp, open(tmp, "w", buffering=1 << 20) as fh:
        for part in parts:
            fh.write("".join(json.dumps(r) + "\n" for r in part.records(reasoning)))
    return Path(path)


def _arrow_table(part: CellSentences):
    import pyarrow as pa

    value_type = pa.uint16() if part.indices.dtype == np.uint16 else pa.uint32()
    genes = pa.ListArray.from_arrays(
        pa.array(part.indptr.astype(np.int32)), pa.array(part.indices, type=value_type)
    )
    cols = {"cell_name": pa.array(part.cell_names.astype(str)), "genes": genes}
    if part.labels is not None:
        cols["label"] = pa.array(list(part.labels), type=pa.string())
    return pa.table(cols)


def _schema_metadata(part: CellSentences) -> dict[bytes, bytes]:
    return {
        b"cellreasoner.genes": json.dumps(list(map(str, part.genes))).encode(),
        b"cellreasoner.order": part.order.encode(),
        b"cellreasoner.max_genes": str(part.max_genes).encode(),
    }


def _write_tables(parts: Iterable[CellSentences], path: str | os.PathLike, open_writer) -> Path:
    """Stream chunks as Arrow tables through ``open_writer(tmp_path, schema)``, atomically."""
    with atomic_path(path) as tmp:
        writer = None
        try:
            for part in parts:
                table = _arrow_table(part)
                if writer is None:
                    table = table.replace_schema_metadata(_schema_metadata(part))
                    schema = table.schema
                    writer = open_writer(tmp, schema)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
            if writer is None:
                raise InputError("No cells to write.")
        finally:
            if writer is not None:
                writer.close()
    return Path(path)


def write_arrow(parts: Iterable[CellSentences], path: str | os.PathLike,
                compression: str | None = "lz4") -> Path:
    """Stream chunks to the compact Arrow IPC form (fastest; vocabulary in the metadata).

    Same columns as :func:`write_parquet`; ``compression``: ``"lz4"`` (default),
    ``"zstd"`` or ``None``.
    """
    import pyarrow.ipc as ipc

    options = ipc.IpcWriteOptions(compression=compression)
    return _write_tables(parts, path, lambda tmp, schema: ipc.new_file(tmp, schema,
                                                                       options=options))


def write_parquet(parts: Iterable[CellSentences], path: str | os.PathLike) -> Path:
    """Stream chunks to the compact Parquet form (vocabulary kept in the file metadata)."""
    import pyarrow.parquet as pq

    return _write_tables(parts, path,
                         lambda tmp, schema: pq.ParquetWriter(tmp, schema, compression="zstd"))


def _parts_from_batches(batches, meta: dict, path: Path) -> Iterator[CellSentences]:
    if b"cellreasoner.genes" not in meta:
        raise InputError(f"{path} has no cellreasoner vocabulary; write it with prepare.")
    genes = np.asarray(json.loads(meta[b"cellreasoner.genes"]), dtype=object)
    order = meta.get(b"cellreasoner.order", b"ranked").decode()
    max_genes = int(meta.get(b"cellreasoner.max_genes", b"1000"))
    for batch in batches:
        lists = batch.column("genes")
        offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.values.to_numpy()
        labels = None
        if "label" in batch.schema.names:
            labels = np.asarray(batch.column("label").to_pylist(), dtype=object)
        yield CellSentences(
            genes=genes, indptr=offsets - offsets[0], indices=values[offsets[0] : offsets[-1]],
            cell_names=np.asarray(batch.column("cell_name").to_pylist(), dtype=object),
            labels=labels, order=order, max_genes=max_genes,
        )


def iter_parquet(path: str | os.PathLike, batch_size: int = 65536) -> Iterator[CellSentences]:
    """Read a compact Parquet file back in chunks."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a cellreasoner Parquet file ({exc}).") from None
    yield from _parts_from_batches(pf.iter_batches(batch_size=batch_size),
                                   pf.schema_arrow.metadata or {}, path)


def iter_arrow(path: str | os.PathLike) -> Iterator[CellSentences]:
    """Read a compact Arrow IPC file back, one written chunk at a time (memory-mapped)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = Path(path)
    try:
        reader = ipc.open_file(pa.memory_map(str(path), "r"))
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path} is not a cellreasoner Arrow file ({exc}).") from None
    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    yield from _parts_from_batches(batches, reader.schema.metadata or {}, path)


def read_compact(path: str | os.PathLike) -> CellSentences:
    """Load a compact ``.parquet`` or ``.arrow`` file written by ``cellreasoner prepare``."""
    path = Path(path)
    parts = iter_arrow(path) if path.suffix.lower() == ".arrow" else iter_parquet(path)
    return CellSentences.concat(list(parts))
