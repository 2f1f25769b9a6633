"""``prepare``: data in, cell sentences / prompts out, streamed in bounded memory."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_has_cells, check_obs_column, looks_like_counts
from ..errors import InputError
from ..matrix import DEFAULT_CHUNK, MatrixSource
from .core import DEFAULT_MAX_GENES, CellSentences, iter_sentence_chunks, prefetch
from .formats import write_arrow, write_jsonl, write_parquet, write_upstream_json

__all__ = ["FORMATS", "PrepareSummary", "open_source", "prepare"]

log = logging.getLogger(__name__)

#: Output formats by file suffix.
FORMATS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class PrepareSummary:
    """What ``prepare`` did: counts, matched genes, expression kind, timing."""

    n_cells: int = 0
    n_genes_data: int = 0
    n_genes_matched: int = 0
    n_genes_list: int = 0
    empty_sentences: int = 0
    mean_sentence_genes: float = 0.0
    expression: str = ""
    seconds: float = 0.0
    output: str | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary the CLI prints."""
        rate = self.n_cells / self.seconds if self.seconds else float("inf")
        return (
            f"{self.n_cells:,} cells, {self.n_genes_matched:,}/{self.n_genes_list:,} list genes "
            f"matched ({self.n_genes_data:,} in data), {self.mean_sentence_genes:.0f} genes per "
            f"sentence, {self.expression or 'unknown'} values, {self.seconds:.1f} s "
            f"({rate:,.0f} cells/s)" + (f" -> {self.output}" if self.output else "")
        )


def _checked(chunks: Iterator[CellSentences], summary: PrepareSummary,
             source_name: str, allow_empty: bool) -> Iterator[CellSentences]:
    """Pass chunks through, accumulating the summary and refusing empty sentences."""
    total_genes = 0
    for part in chunks:
        lengths = np.diff(part.indptr)
        empty = int((lengths == 0).sum())
        if empty and not allow_empty:
            names = ", ".join(map(str, part.cell_names[lengths == 0][:3]))
            raise InputError(
                f"{source_name}: {empty} cell(s) in a chunk have no expressed gene from the gene "
                f"list (e.g. {names}). Filter them out (sc.pp.filter_cells(adata, min_genes=1)) "
                "or pass allow_empty=True / --allow-empty to keep empty sentences."
            )
        summary.empty_sentences += empty
        summary.n_cells += len(part)
        total_genes += int(lengths.sum())
        yield part
    summary.mean_sentence_genes = total_genes / max(summary.n_cells, 1)


def _value_guard(source: MatrixSource, name: str, summary: PrepareSummary) -> MatrixSource:
    """Wrap a source so the summary records the expression kind of the first values (the
    values themselves are checked by :meth:`MatrixSource.iter_chunks` as they stream)."""
    inner = source._chunks

    def chunks(chunk_size: int):
        for chunk in inner(chunk_size):
            if not summary.expression and chunk.data.size:
                counts = looks_like_counts(chunk.data, max_values=10_000)
                summary.expression = "counts" if counts else "log-normalised"
            yield chunk

    return MatrixSource(source.n_obs, source.var_names, source.obs_names, chunks,
                        source.description)


def open_source(data, *, layer: str | None = None, use_raw: bool = False,
                label_key: str | None = None,
                assay: str | None = None) -> tuple[MatrixSource, np.ndarray | None, str]:
    """A chunked matrix source, labels and a display name from an AnnData or a path.

    ``.h5ad`` paths are streamed straight from HDF5 (obs/var read, X never loaded);
    other formats go through :func:`cellreasoner.io.read`. A scaled ``X`` with a
    log-normalised ``.raw`` reads ``.raw`` (logged), as ``annotate`` and scanpy's tools do.
    """
    from ..checks import prefer_raw
    from ..io import open_input
    from ..matrix import from_anndata

    adata, source, name, _ = open_input(data, layer=layer, use_raw=use_raw, assay=assay)
    if layer is None and not use_raw and prefer_raw(adata):
        source = from_anndata(adata, use_raw=True)
    name = name or "AnnData"
    labels = None
    if label_key is not None:
        check_obs_column(adata, label_key, f"{name}: label")
        labels = adata.obs[label_key].to_numpy()
    if len(set(source.obs_names)) != len(source.obs_names):
        from collections import Counter

        dup = [k for k, c in Counter(source.obs_names).items() if c > 1][:3]
        raise InputError(
            f"{name}: duplicate cell names (e.g. {', '.join(dup)}). Make them unique first "
            "(adata.obs_names_make_unique())."
        )
    return source, labels, name


def _write_output(chunks: Iterator[CellSentences], out: Path, reasoning: bool) -> Path:
    """Stream ``chunks`` to ``out`` in the format its suffix names."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InputError(
            f"Output {out}: unknown format '{out.suffix}'. Use .json (upstream "
            "CellReasoner), .jsonl, or the compact .arrow / .parquet."
        )
    if fmt == "json":
        write_upstream_json(chunks, out, reasoning=reasoning)
    elif fmt == "jsonl":
        write_jsonl(chunks, out, reasoning=reasoning)
    elif fmt == "arrow":
        write_arrow(chunks, out)
    else:
        write_parquet(chunks, out)
    return out


def prepare(
    data,
    output: str | os.PathLike | None = None,
    *,
    gene_list: Sequence[str] | str | os.PathLike | None = None,
    order: str = "ranked",
    max_genes: int = DEFAULT_MAX_GENES,
    label_key: str | None = None,
    reasoning: bool = False,
    layer: str | None = None,
    use_raw: bool = False,
    assay: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    allow_empty: bool = False,
    species: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> tuple[CellSentences | None, PrepareSummary]:
    """Build CellReasoner cell sentences (and prompts) for every cell.

    Parameters
    ----------
    data
        AnnData or a path (``.h5ad``, Seurat ``.rds``, 10x ``.h5``/directory, CSV/TSV).
    output
        ``.json`` (upstream CellReasoner list, byte-identical), ``.jsonl``, or the compact
        form as ``.arrow`` (Arrow IPC, fastest) or ``.parquet`` (smallest).
        ``None`` (default): return the sentences in memory instead.
    gene_list
        Genes and their order: a list, a path, or ``None`` for the published ranked list.
    order
        ``"ranked"`` (default; upstream) or ``"expression"`` (C2S-style, the cell's own order).
    max_genes
        Genes per sentence (default 1000, as upstream).
    label_key
        ``obs`` column with ground truth (the ``output`` field of the records).
    reasoning
        Use the reasoning-mode instruction (``<think></think>``) in JSON/JSONL exports.
    layer, use_raw
        Which matrix to read (default ``X``).
    assay
        Seurat ``.rds`` input: the assay to read (default: the active assay).
    chunk_size
        Cells per chunk (default 8192): memory is bounded by this, not by the dataset.
    allow_empty
        Keep cells whose sentence is empty instead of raising (default False).
    species
        ``"auto"`` (default: read from the symbols' case, ``Cd3e`` is mouse), ``"human"`` or
        ``"mouse"``. For mouse data the published (human) list orders the genes through its
        one-to-one orthologs, and the sentences keep the data's own symbols (``Cd3e``); a
        ``gene_list`` you pass is used as it is. Noted in the summary.
    progress
        Called with the number of cells of each finished chunk (default ``None``).

    Returns
    -------
    The in-memory :class:`~cellreasoner.sentences.CellSentences` (``None`` when streaming to
    ``output``) and a :class:`PrepareSummary`.
    """
    from ..resources import load_gene_list
    from ..species import resolve_species, species_vocabulary

    t0 = time.perf_counter()
    if gene_list is None and order == "expression":
        genes = None  # C2S-style: the data's own genes
    elif gene_list is None or isinstance(gene_list, str | os.PathLike):
        genes = load_gene_list(gene_list)
    else:
        genes = list(gene_list)
    source, labels, name = open_source(data, layer=layer, use_raw=use_raw, label_key=label_key,
                                       assay=assay)
    check_has_cells(source.n_obs, name)
    found = resolve_species(species, source.var_names)
    if genes is not None:  # the published list is human: translated for mouse data
        genes = species_vocabulary(genes, found.species, source.var_names,
                                   translate=gene_list is None, source=name)
    summary = PrepareSummary(n_genes_data=len(source.var_names))
    summary.notes.append(f"species: {found}")
    vocab = genes if genes is not None else list(source.var_names)
    summary.n_genes_list = len(vocab)
    summary.n_genes_matched = len(set(vocab) & set(source.var_names))
    guarded = _value_guard(source, name, summary)
    chunks = _checked(
        prefetch(iter_sentence_chunks(guarded, genes, order=order, max_genes=max_genes,
                                      labels=labels, chunk_size=chunk_size, progress=progress)),
        summary, name, allow_empty,
    )
    result = None
    if output is None:
        parts = list(chunks)
        if not parts:
            raise InputError(f"{name}: the data has no cells.")
        result = CellSentences.concat(parts)
    else:
        summary.output = str(_write_output(chunks, Path(output), reasoning))
    summary.seconds = time.perf_counter() - t0
    log.info("prepared %s", summary.line())
    return result, summary
