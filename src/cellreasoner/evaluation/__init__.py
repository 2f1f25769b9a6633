"""Evaluate annotations against ground truth: the hierarchical CellReasoner score and metrics."""

from __future__ import annotations

from ._evaluate import EvaluationResult, evaluate, macro_f1, read_results, score_adata
from .scoring import (
    FLAT_MAJORS,
    JUDGE_INSTRUCTION,
    LEVELS,
    MAJOR_TYPES,
    SUBTYPE_ANCHORS,
    Explanation,
    LLMJudge,
    PairScorer,
    explain_pair,
    parse_judgment,
    score_pair,
)

__all__ = ["FLAT_MAJORS", "JUDGE_INSTRUCTION", "LEVELS", "MAJOR_TYPES", "SUBTYPE_ANCHORS",
           "EvaluationResult", "Explanation", "LLMJudge", "PairScorer", "evaluate",
           "explain_pair", "macro_f1", "parse_judgment", "read_results", "score_adata",
           "score_pair"]
