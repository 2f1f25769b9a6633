"""Tools (scanpy ``tl``-style): annotate cells or marker tables, audit existing labels, score
predictions, evaluate runs."""

from __future__ import annotations

from ._lazy import lazy_getattr

_EXPORTS = {
    "annotate": "cellreasoner.annotation:annotate",
    "audit": "cellreasoner.audit:audit",
    "annotate_markers": "cellreasoner.markers:annotate_markers",
    "score": "cellreasoner.evaluation:score_adata",
    "evaluate": "cellreasoner.evaluation:evaluate",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
