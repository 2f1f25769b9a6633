"""The one protocol every annotation backend implements.

A backend declares what it needs and what it returns in :class:`Capabilities`; the annotation
engine reads those flags and never looks at a backend's name or probes its methods:

- ``reads="prompts"`` backends (language models) answer CellReasoner prompts in
  :meth:`Backend.generate`;
- ``reads="matrix"`` backends (the built-in marker reasoner) read each cell's expression and
  stream :class:`CellAnswers` blocks from :meth:`Backend.annotate_matrix`; they answer prompts
  too (cluster mode asks one prompt per cluster).

Before a run the engine calls :meth:`Backend.configure` with the run's :class:`RunContext`
(gene list, sentence length, tissue), whether the backend was given by name or as an object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from ..prompts import Prompt, SamplingParams

if TYPE_CHECKING:
    from ..matrix import MatrixSource

#: Called with the number of prompts (or cells) just finished, for progress bars.
ProgressCallback = Callable[[int], None]


@dataclass
class Generation:
    """One generated answer.

    ``text`` is the model's visible response; ``reasoning`` holds reasoning that a server
    returned in a separate field (``reasoning_content``) or that a backend produced itself.
    ``meta`` carries backend-specific extras (token counts, confidence, ontology id, ...).
    """

    text: str
    reasoning: str | None = None
    meta: dict = field(default_factory=dict)


def failed_generations(reason: str, n: int = 1) -> list[Generation]:
    """What a backend returns for a prompt it could not get an answer for (after its own
    retries): ``n`` empty generations with ``meta["error"] = reason``.

    The engine records such a prompt as failed (its cells labelled "Unknown", flagged
    ``request``), counts it in the run's summary and never caches it, so a rerun asks it again.
    """
    reason = str(reason) or "no answer"
    return [Generation("", None, {"error": reason}) for _ in range(n)]


def is_failed(generations: Sequence[Generation]) -> bool:
    """Whether any of a prompt's generations is a failure (see :func:`failed_generations`)."""
    return any(g.meta.get("error") for g in generations)


#: Called with a prompt's index and its generations as soon as they are finished (caching).
ResultCallback = Callable[[int, list[Generation]], None]


@dataclass(frozen=True)
class Capabilities:
    """What a backend needs from a run and what its answers carry.

    Attributes
    ----------
    reads
        ``"prompts"``: answers cell-sentence prompts (:meth:`Backend.generate`);
        ``"matrix"``: reads expression itself (:meth:`Backend.annotate_matrix`) in cell and
        hybrid mode, and answers prompts in cluster mode.
    tissue
        Uses the run's tissue itself (the builtin restricts its knowledge base); otherwise the
        tissue is named in the prompt's instruction.
    confidence
        Answers carry their own confidence (``meta["confidence"]``).
    ontology
        Answers carry Cell Ontology terms (``meta["ontology_id"]``, ``["ontology_label"]``).
    evidence
        Matrix answers carry their own evidence check (the backend knows which genes it cited).
    chunk_jobs
        A matrix backend whose work on chunks of cells is self-contained
        (:meth:`Backend.chunk_job`): local worker processes and the Ray engine run it.
    """

    reads: Literal["prompts", "matrix"] = "prompts"
    tissue: bool = False
    confidence: bool = False
    ontology: bool = False
    evidence: bool = False
    chunk_jobs: bool = False


@dataclass(frozen=True)
class RunContext:
    """What the engine tells a backend about the run before it starts.

    Attributes
    ----------
    gene_list
        The ranked vocabulary the cell sentences are built from.
    max_genes
        Genes per cell sentence.
    tissue
        The run's tissue, or ``None``.
    reasoning
        Whether reasoning traces are asked for.
    species
        The data's species (``"human"`` or ``"mouse"``): its gene symbols are that
        species' (:mod:`cellreasoner.species`).
    modality
        What the matrix measures: ``"rna"`` (expression, default) or ``"atac"`` (gene
        activity from chromatin accessibility, see :mod:`cellreasoner.atac`).
    """

    gene_list: tuple[str, ...]
    max_genes: int = 1000
    tissue: str | None = None
    reasoning: bool = False
    species: str = "human"
    modality: str = "rna"


@dataclass
class CellAnswers:
    """Answers of a matrix backend for a block of consecutive cells, one array per field.

    Text arrays are ``object`` arrays of ``str``; ``evidence_fraction`` is NaN where the
    reasoning cites no gene; ``cited_present``/``cited_absent`` are ``", "``-joined symbols.
    """

    label: np.ndarray
    confidence: np.ndarray
    ontology_id: np.ndarray
    ontology_label: np.ndarray
    reasoning: np.ndarray
    evidence_fraction: np.ndarray
    evidence_flag: np.ndarray
    cited_present: np.ndarray
    cited_absent: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def pack(self) -> PackedAnswers:
        """These answers as workers send them and the writer holds them until the table is
        made: each text column as its distinct strings, compressed (zstd), and a code per
        cell (a million cells' answers take ~60 MiB instead of ~400)."""
        plain, text = {}, {}
        for f in fields(self):
            column = np.asarray(getattr(self, f.name))
            # the text columns (object arrays) packed; numbers, and text that is not all
            # str (a backend's own None), kept as they are
            packed = _pack_strings(column) if column.dtype == object else None
            if packed is None:
                plain[f.name] = column
            else:
                text[f.name] = packed
        return PackedAnswers(len(self), plain, text)


@dataclass
class PackedAnswers:
    """:meth:`CellAnswers.pack`'s compact form; :meth:`unpack` gives the answers back.

    ``text`` maps a column to ``(compressed UTF-8 of its distinct strings, their byte
    lengths, each cell's code)``; ``plain`` holds the other columns as they are.
    """

    n: int
    plain: dict[str, np.ndarray]
    text: dict[str, tuple[bytes, np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return self.n

    def unpack(self) -> CellAnswers:
        """The :class:`CellAnswers` packed (equal strings of a column are one object)."""
        columns = dict(self.plain)
        for name, packed in self.text.items():
            columns[name] = _unpack_strings(*packed)
        return CellAnswers(**columns)


def _pack_strings(column: np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray] | None:
    import pandas as pd
    import pyarrow as pa

    # by object: a block's equal strings are mostly one object already, and ids hash ~10x
    # faster than long strings (equal strings that are separate objects are stored twice)
    n = len(column)
    codes, ids = pd.factorize(np.fromiter(map(id, column), dtype=np.int64, count=n),
                              use_na_sentinel=False)
    at = np.empty(len(ids), dtype=np.int64)
    at[codes[::-1]] = np.arange(n - 1, -1, -1)  # each object's first cell
    distinct = column[at].tolist()
    if not all(type(v) is str for v in distinct):
        return None
    encoded = [v.encode("utf-8", "surrogatepass") for v in distinct]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    blob = pa.compress(b"".join(encoded), codec="zstd", asbytes=True)
    return blob, lengths, codes.astype(np.int32)


def _unpack_strings(blob: bytes, lengths: np.ndarray, codes: np.ndarray) -> np.ndarray:
    import pyarrow as pa

    data = pa.decompress(blob, decompressed_size=int(lengths.sum()), codec="zstd",
                         asbytes=True)
    ends = np.cumsum(lengths)
    uniq = np.empty(len(lengths), dtype=object)
    uniq[:] = [data[e - k:e].decode("utf-8", "surrogatepass")
               for e, k in zip(ends.tolist(), lengths.tolist(), strict=True)]
    return uniq[codes] if len(codes) else np.empty(0, dtype=object)


class Backend(ABC):
    """A model that answers CellReasoner prompts.

    Subclasses set ``name`` (the registry name), ``model`` (what is loaded/served) and
    ``capabilities``, and implement :meth:`generate` (and :meth:`annotate_matrix` when
    ``capabilities.reads == "matrix"``). Heavy libraries are imported in ``__init__``, never at
    module import, through :func:`cellreasoner.errors.require`.
    """

    name: str = "base"
    model: str = ""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def configure(self, context: RunContext) -> None:  # noqa: B027 - optional hook
        """Take the run's settings (called by the engine before any answer is asked for)."""

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer every prompt; returns ``sampling.n`` generations per prompt, in order.

        ``on_result(index, generations)`` is called as each prompt finishes (or at least once
        per prompt before returning), so callers can persist answers before the whole batch is
        done; ``progress(k)`` as ``k`` more prompts finish.
        """

    def annotate_matrix(
        self,
        source: MatrixSource,
        *,
        connectivities=None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[CellAnswers]:
        """Answer every cell of ``source`` from its expression, block by block, in order.

        Only backends whose ``capabilities.reads == "matrix"`` implement it; the engine never
        calls it on the others. ``connectivities`` is the cells x cells kNN graph
        (``adata.obsp["connectivities"]``) or ``None``; ``progress(k)`` is called as ``k`` more
        cells are answered.
        """
        raise NotImplementedError(f"backend '{self.name}' does not read expression matrices")

    def read_matrix(self, source: MatrixSource) -> MatrixSource:
        """``source`` as a matrix backend reads it (default: as it is; the builtin reads gene
        activity through its ATAC profile). The engines call it once per run, before
        :meth:`chunk_job`."""
        return source

    def chunk_job(self, source: MatrixSource):
        """A matrix backend's self-contained (picklable) work on chunks of ``source``, for the
        Ray engine and local worker processes (:mod:`cellreasoner.distributed`):
        ``pass_one_spans(n_obs, connectivities, chunk_size)`` (the rows ``score`` must see
        first; none without a pass one), ``score(chunk, start, keep_scores,
        bounds=None)``, ``planner(connectivities)`` (``add`` each score as it arrives, or
        ``merge`` other planners' ``export``, then ``plan(source)``), ``answer(chunk, start,
        plan) -> CellAnswers`` and ``run(source, connectivities, progress)`` (all of it in one
        process). Only matrix backends that scale out implement it."""
        raise NotImplementedError(f"backend '{self.name}' cannot answer chunks on Ray workers")

    def describe(self) -> dict:
        """Provenance for ``adata.uns['cellreasoner']``."""
        return {"backend": self.name, "model": self.model}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, GPU memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
