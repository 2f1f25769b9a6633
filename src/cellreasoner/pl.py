"""Plots (scanpy ``pl``-style): score violins, level bars, label heatmaps, UMAPs."""

from __future__ import annotations

from ._lazy import lazy_getattr

_EXPORTS = {
    "score_violin": "cellreasoner.plot:score_violin",
    "level_bar": "cellreasoner.plot:level_bar",
    "label_heatmap": "cellreasoner.plot:label_heatmap",
    "umap": "cellreasoner.plot:umap",
    "label_counts": "cellreasoner.plot:label_counts",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
