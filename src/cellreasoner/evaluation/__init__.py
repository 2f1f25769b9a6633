"""Evaluate annotations against ground truth: the hierarchical CellReasoner score and metrics.

- :func:`evaluate` compares one or many runs (:class:`EvaluationResult`); :func:`score_adata`
  writes per-cell scores into ``adata.obs``.
- :mod:`.results` reads runs (AnnData, ``.h5ad``, result CSV, DataFrame).
- :mod:`.metrics` holds the level table (:data:`LEVELS`) and macro-F1 on Cell Ontology terms.
- :mod:`.scoring` scores (truth, prediction) pairs by rules on the Cell Ontology graph
  (:class:`PairScorer`, :func:`score_pair`), overridden by a judged pair table.
- :mod:`.judge` is the optional LLM judge (:class:`LLMJudge`).
"""

from __future__ import annotations

from ._evaluate import EvaluationResult, evaluate, score_adata
from .judge import JUDGE_INSTRUCTION, LLMJudge, parse_judgment
from .metrics import LEVEL_COLUMNS, LEVELS, UNMAPPED, collapse_to_truth, macro_f1
from .results import ResultTable, default_pred_column, provenance_for, read_results
from .scoring import (
    FLAT_MAJORS,
    MAJOR_TYPES,
    SUBTYPE_ANCHORS,
    Explanation,
    PairScorer,
    explain_pair,
    score_pair,
)

__all__ = [
    "FLAT_MAJORS",
    "JUDGE_INSTRUCTION",
    "LEVELS",
    "LEVEL_COLUMNS",
    "MAJOR_TYPES",
    "SUBTYPE_ANCHORS",
    "UNMAPPED",
    "EvaluationResult",
    "Explanation",
    "LLMJudge",
    "PairScorer",
    "ResultTable",
    "collapse_to_truth",
    "default_pred_column",
    "evaluate",
    "explain_pair",
    "macro_f1",
    "parse_judgment",
    "provenance_for",
    "read_results",
    "score_adata",
    "score_pair",
]
