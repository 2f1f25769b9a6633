"""Cell sentences exactly as the published CellReasoner models saw them, at any scale.

- :mod:`.core`: :class:`CellSentences` (the compact form) and the chunked builder
  (:func:`build_sentences`, :func:`iter_sentence_chunks`);
- :mod:`.formats`: the upstream JSON / JSONL exports and the compact Arrow / Parquet files;
- :mod:`.prepare`: :func:`prepare`, data in, sentences / prompt files out in bounded memory.
"""

from __future__ import annotations

# ``prepare`` is imported eagerly, after its submodule: the function then stays bound to the
# name ``cellreasoner.sentences.prepare`` (importing the submodule later does not rebind it).
from .core import (
    DEFAULT_MAX_GENES,
    ORDERS,
    SEPARATOR,
    CellSentences,
    build_sentences,
    iter_sentence_chunks,
    prefetch,
)
from .formats import (
    iter_arrow,
    iter_parquet,
    read_compact,
    write_arrow,
    write_jsonl,
    write_parquet,
    write_upstream_json,
)
from .prepare import FORMATS, PrepareSummary, open_source, prepare

__all__ = [
    "DEFAULT_MAX_GENES",
    "FORMATS",
    "ORDERS",
    "SEPARATOR",
    "CellSentences",
    "PrepareSummary",
    "build_sentences",
    "iter_arrow",
    "iter_parquet",
    "iter_sentence_chunks",
    "open_source",
    "prefetch",
    "prepare",
    "read_compact",
    "write_arrow",
    "write_jsonl",
    "write_parquet",
    "write_upstream_json",
]
