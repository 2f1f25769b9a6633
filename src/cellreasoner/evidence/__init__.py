"""Evidence checks of reasoning traces (being split into public API and private modules)."""

from ._fast import (  # noqa: F401  (the private names: tests compare against them)
    _CLAUSE,
    _CLAUSE_FAST,
    CD_ALIASES,
    Evidence,
    _reference_check_evidence,
    _reference_check_evidence_many,
    check_evidence,
    check_evidence_many,
    cited_genes,
)

__all__ = ["CD_ALIASES", "Evidence", "check_evidence", "check_evidence_many", "cited_genes"]
