"""Cell sentences exactly as the published CellReasoner models saw them, at any scale.

A cell sentence is the cell's non-zero genes in the order of a ranked gene list (the published
10,000-gene HVG list by default), at most ``max_genes``, joined by ``", "``. Sentences are kept in
a compact form — per cell, the positions of its genes in the vocabulary (``uint16``) — from which
text is rendered only when needed. The upstream JSON, JSONL, Arrow and Parquet files are
exports (:mod:`cellreasoner.sentences.formats`).
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..matrix import DEFAULT_CHUNK, MatrixSource
from ..prompts import Prompt, instruction_for

__all__ = [
    "DEFAULT_MAX_GENES",
    "ORDERS",
    "SEPARATOR",
    "CellSentences",
    "build_sentences",
    "iter_sentence_chunks",
    "prefetch",
]

#: Gene orders: the ranked list's order (upstream CellReasoner) or the cell's own expression.
ORDERS = ("ranked", "expression")
DEFAULT_MAX_GENES = 1000
SEPARATOR = ", "


@dataclass
class CellSentences:
    """Compact cell sentences.

    Attributes
    ----------
    genes
        The vocabulary (gene symbols) the positions refer to.
    indptr, indices
        CSR-style: cell ``i``'s genes are ``genes[indices[indptr[i]:indptr[i + 1]]]``, in
        sentence order.
    cell_names
        One name per cell.
    labels
        Optional ground-truth label per cell (``None`` entries where missing).
    order, max_genes
        How the sentences were built.
    """

    genes: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    cell_names: np.ndarray
    labels: np.ndarray | None = None
    order: str = "ranked"
    max_genes: int = DEFAULT_MAX_GENES

    def __len__(self) -> int:
        return len(self.cell_names)

    @property
    def n_cells(self) -> int:
        return len(self)

    def _gene_list(self) -> list[str]:
        cached = getattr(self, "_genes_py", None)
        if cached is None:
            cached = [str(g) for g in self.genes]
            self._genes_py = cached
        return cached

    def cell_genes(self, i: int) -> list[str]:
        """The genes of cell ``i`` in sentence order."""
        idx = self.indices[self.indptr[i] : self.indptr[i + 1]].tolist()
        if not idx:
            return []
        got = operator.itemgetter(*idx)(self._gene_list())
        return [got] if len(idx) == 1 else list(got)

    def render(self, json_escaped: bool = False) -> tuple[bytes, np.ndarray]:
        """All sentences as one UTF-8 buffer and ``n + 1`` offsets (fast bulk rendering).

        With ``json_escaped`` the text is escaped as inside a JSON string (``ensure_ascii``).
        """
        from ._kernels import render_rows

        key = "_tokens_json" if json_escaped else "_tokens"
        sep = SEPARATOR.encode()
        tokens = getattr(self, key, None)
        if tokens is None:
            enc = [(json.dumps(str(g))[1:-1] if json_escaped else str(g)).encode() + sep
                   for g in self.genes]
            offsets = np.zeros(len(enc) + 1, dtype=np.int64)
            np.cumsum([len(e) for e in enc], out=offsets[1:])
            tokens = (offsets, np.frombuffer(b"".join(enc), dtype=np.uint8))
            setattr(self, key, tokens)
        buf, offsets = render_rows(self.indptr, self.indices, tokens[0], tokens[1], len(sep))
        return buf.tobytes(), offsets

    def sentence(self, i: int) -> str:
        """The text of cell ``i``'s sentence."""
        return SEPARATOR.join(self.cell_genes(i))

    def iter_sentences(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self.sentence(i)

    def prompts(self, reasoning: bool = False) -> list[Prompt]:
        """One :class:`~cellreasoner.prompts.Prompt` per cell, with the upstream instruction."""
        instruction = instruction_for(reasoning)
        return [Prompt(instruction, s, reasoning) for s in self.iter_sentences()]

    def records(self, reasoning: bool = False, include_output: bool | None = None):
        """Upstream records: ``cell_name``, ``instruction``, ``input`` and ``output``."""
        instruction = instruction_for(reasoning)
        with_output = self.labels is not None if include_output is None else include_output
        for i in range(len(self)):
            rec = {
                "cell_name": str(self.cell_names[i]),
                "instruction": instruction,
                "input": self.sentence(i),
            }
            if with_output and self.labels is not None and self.labels[i] is not None:
                rec["output"] = str(self.labels[i])
            yield rec

    def select(self, mask_or_index) -> CellSentences:
        """A subset of cells (boolean mask or integer index)."""
        idx = np.arange(len(self))[mask_or_index]
        starts, stops = self.indptr[idx], self.indptr[idx + 1]
        lengths = stops - starts
        indptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)]
                              or [np.zeros(0, dtype=np.int64)])
        return CellSentences(
            genes=self.genes, indptr=indptr, indices=self.indices[take],
            cell_names=self.cell_names[idx],
            labels=None if self.labels is None else self.labels[idx],
            order=self.order, max_genes=self.max_genes,
        )

    @classmethod
    def concat(cls, parts: Sequence[CellSentences]) -> CellSentences:
        """Join chunks built over the same vocabulary."""
        if not parts:
            raise InputError("No cells to concatenate.")
        offsets = np.cumsum([0] + [len(p.indices) for p in parts[:-1]])
        shifted = [p.indptr[1:] + o for p, o in zip(parts, offsets, strict=True)]
        indptr = np.concatenate([np.zeros(1, np.int64), *shifted])
        labels = None
        if parts[0].labels is not None:
            labels = np.concatenate([p.labels for p in parts])
        return cls(
            genes=parts[0].genes, indptr=indptr,
            indices=np.concatenate([p.indices for p in parts]),
            cell_names=np.concatenate([p.cell_names for p in parts]), labels=labels,
            order=parts[0].order, max_genes=parts[0].max_genes,
        )

    # --- exports (in formats.py) ---------------------------------------------------------
    def to_json(self, path: str | os.PathLike, reasoning: bool = False,
                include_output: bool | None = None) -> Path:
        """Write the upstream CellReasoner JSON (byte-identical to ``s02.build_dataset.py``)."""
        from .formats import write_upstream_json

        return write_upstream_json([self], path, reasoning=reasoning,
                                   include_output=include_output)

    def to_jsonl(self, path: str | os.PathLike, reasoning: bool = False) -> Path:
        """One upstream record per line."""
        from .formats import write_jsonl

        return write_jsonl([self], path, reasoning=reasoning)

    def to_parquet(self, path: str | os.PathLike) -> Path:
        """The compact form: ``cell_name``, ``genes`` (list<uint16>), ``label``."""
        from .formats import write_parquet

        return write_parquet([self], path)

    def to_arrow(self, path: str | os.PathLike) -> Path:
        """The compact form as an Arrow IPC file (fastest to write and to read)."""
        from .formats import write_arrow

        return write_arrow([self], path)

    @classmethod
    def read_parquet(cls, path: str | os.PathLike) -> CellSentences:
        """Load a compact file (``.parquet`` or ``.arrow``) written by ``prepare``."""
        from .formats import read_compact

        return read_compact(path)


# --- building -------------------------------------------------------------------------------
def _vocabulary_positions(var_names: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
    """For each variable, its position in ``vocab`` (first occurrence) or -1."""
    first: dict[str, int] = {}
    for pos, g in enumerate(vocab):
        first.setdefault(g, pos)
    col_pos = np.full(len(var_names), -1, dtype=np.int32)
    seen: set[str] = set()
    for j, g in enumerate(var_names):
        if g in seen:  # duplicated symbol in the data: the first column is the gene
            continue
        seen.add(g)
        col_pos[j] = first.get(g, -1)
    return col_pos


def _chunk_rows(chunk: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(chunk.shape[0], dtype=np.int64), np.diff(chunk.indptr))


def _truncate(rows: np.ndarray, n_rows: int, max_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Given row ids sorted by row, keep the first ``max_genes`` per row; return (keep, indptr)."""
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    within = np.arange(len(rows), dtype=np.int64) - starts[rows]
    keep = within < max_genes
    kept = np.minimum(counts, max_genes)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(kept, out=indptr[1:])
    return keep, indptr


_POOL = None
#: Below this many cells a chunk is selected on one thread.
_PARALLEL_MIN_ROWS = 2048


def _thread_pool():
    """A process-wide pool for the GIL-free kernels (one thread per core, at most 8)."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                   thread_name_prefix="cellreasoner-kernel")
    return _POOL


def _select_ranked(chunk: sp.csr_matrix, col_pos: np.ndarray, n_vocab: int, max_genes: int,
                   dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per row, vocabulary positions of non-zero genes in vocabulary order (compiled kernel).

    Large chunks are split into row blocks selected in parallel (the kernel releases the GIL).
    """
    from ._kernels import ranked_rows

    sink_pos = np.where(col_pos < 0, n_vocab, col_pos).astype(np.int32)
    n = chunk.shape[0]
    workers = min(8, os.cpu_count() or 1)
    if workers == 1 or n < _PARALLEL_MIN_ROWS:
        indptr, pos = ranked_rows(chunk.indptr, chunk.indices, chunk.data, sink_pos, n_vocab,
                                  max_genes)
        return indptr, pos.astype(dtype)
    bounds = np.linspace(0, n, workers + 1).astype(np.int64)
    futures = [
        _thread_pool().submit(ranked_rows, chunk.indptr[a : b + 1], chunk.indices, chunk.data,
                              sink_pos, n_vocab, max_genes)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    results = [f.result() for f in futures]
    offsets = np.cumsum([0] + [len(r[1]) for r in results[:-1]])
    indptr = np.concatenate([np.zeros(1, np.int64)]
                            + [r[0][1:] + o for r, o in zip(results, offsets, strict=True)])
    return indptr, np.concatenate([r[1] for r in results]).astype(dtype)


def _select_expression(chunk: sp.csr_matrix, col_pos: np.ndarray, max_genes: int,
                       dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per row, vocabulary positions of non-zero genes by decreasing expression."""
    n = chunk.shape[0]
    pos = col_pos[chunk.indices]
    data = chunk.data
    keep = (pos >= 0) & (data != 0)
    if data.dtype.kind == "f":
        keep &= ~np.isnan(data)
    rows = _chunk_rows(chunk)[keep]
    pos, values = pos[keep], data[keep]
    order = np.lexsort((pos, -values.astype(np.float64), rows))  # row, then value desc, then pos
    rows, pos = rows[order], pos[order]
    sel, indptr = _truncate(rows, n, max_genes)
    return indptr, pos[sel].astype(dtype)


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead of the consumer.

    Reading and the compiled kernels release the GIL, so on two cores building the next chunk
    overlaps with writing the current one. Errors are re-raised in the consumer; a consumer
    that stops early stops the producer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="cellreasoner-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def iter_sentence_chunks(
    source: MatrixSource,
    gene_list: Sequence[str] | None = None,
    *,
    order: str = "ranked",
    max_genes: int = DEFAULT_MAX_GENES,
    labels: Sequence | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> Iterator[CellSentences]:
    """Build sentences chunk by chunk (memory bounded by ``chunk_size``).

    Parameters
    ----------
    source
        A :class:`~cellreasoner.matrix.MatrixSource` (``matrix.from_anndata``/``from_h5ad``).
    gene_list
        Vocabulary. ``order="ranked"``: the ranked list (default: the published list);
        ``order="expression"``: restrict to these genes (default: all of the data's genes).
    order
        ``"ranked"`` (upstream CellReasoner) or ``"expression"`` (C2S-style).
    max_genes
        At most this many genes per sentence (default 1000).
    labels
        Optional ground truth per cell, kept alongside for training/evaluation exports.
    """
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, not '{order}'.")
    if max_genes < 1:
        raise InputError("max_genes must be at least 1.")
    if gene_list is None:
        if order == "ranked":
            from ..resources import load_gene_list

            gene_list = load_gene_list()
        else:
            gene_list = list(source.var_names)
    vocab = np.asarray(list(gene_list), dtype=object)
    col_pos = _vocabulary_positions(source.var_names, list(gene_list))
    if not (col_pos >= 0).any():
        raise InputError(
            f"None of the data's {len(source.var_names)} genes (e.g. "
            f"{', '.join(map(str, source.var_names[:3]))}) is in the gene list (e.g. "
            f"{', '.join(map(str, vocab[:3]))}). Are the var_names Ensembl IDs or another "
            "species? Use gene symbols (see cellreasoner.read) or pass a matching --gene-list."
        )
    dtype = np.uint16 if len(vocab) <= np.iinfo(np.uint16).max + 1 else np.uint32
    if labels is not None:
        labels = np.asarray(
            [None if (lab is None or (isinstance(lab, float) and np.isnan(lab))) else str(lab)
             for lab in labels], dtype=object)
        if len(labels) != source.n_obs:
            raise InputError(f"Got {len(labels)} labels for {source.n_obs} cells.")
    start = 0
    for chunk in source.iter_chunks(chunk_size):
        n = chunk.shape[0]
        if order == "ranked":
            indptr, idx = _select_ranked(chunk, col_pos, len(vocab), max_genes, dtype)
        else:
            indptr, idx = _select_expression(chunk, col_pos, max_genes, dtype)
        yield CellSentences(
            genes=vocab, indptr=indptr, indices=idx,
            cell_names=source.obs_names[start : start + n],
            labels=None if labels is None else labels[start : start + n],
            order=order, max_genes=max_genes,
        )
        start += n
        if progress is not None:
            progress(n)


def build_sentences(adata_or_source, gene_list: Sequence[str] | None = None, *,
                    order: str = "ranked", max_genes: int = DEFAULT_MAX_GENES,
                    label_key: str | None = None, layer: str | None = None,
                    use_raw: bool = False, chunk_size: int = DEFAULT_CHUNK,
                    progress: Callable[[int], None] | None = None) -> CellSentences:
    """Cell sentences of every cell of an AnnData (or a matrix source), in memory.

    For very large data stream with :func:`iter_sentence_chunks` and the ``write_*``
    functions instead.

    Parameters
    ----------
    adata_or_source
        An AnnData or a :class:`~cellreasoner.matrix.MatrixSource`.
    gene_list
        The ranked vocabulary (default ``None``: the published 10,000-gene list).
    order
        ``"ranked"`` (default; the gene list's order, as upstream) or ``"expression"``.
    max_genes
        Genes per sentence (default 1000).
    label_key
        ``obs`` column kept as ground truth (default ``None``; AnnData input only).
    layer, use_raw
        The expression matrix to read (default ``X``).
    chunk_size
        Cells per chunk (default 8192).
    progress
        Called with the number of cells of each finished chunk (default ``None``).

    Returns
    -------
    CellSentences
        One sentence per cell, in the input's order.
    """
    from ..matrix import from_anndata

    if isinstance(adata_or_source, MatrixSource):
        source, labels = adata_or_source, None
        if label_key is not None:
            raise InputError("label_key needs an AnnData; pass labels to iter_sentence_chunks.")
    else:
        adata = adata_or_source
        source = from_anndata(adata, layer=layer, use_raw=use_raw)
        labels = None
        if label_key is not None:
            from ..checks import check_obs_column

            check_obs_column(adata, label_key)
            labels = adata.obs[label_key].to_numpy()
    parts = list(iter_sentence_chunks(source, gene_list, order=order, max_genes=max_genes,
                                      labels=labels, chunk_size=chunk_size, progress=progress))
    if not parts:
        raise InputError("The data has no cells.")
    return CellSentences.concat(parts)
