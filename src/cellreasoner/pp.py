"""Preprocessing (scanpy ``pp``-style): cell sentences, prompt files, scATAC gene activity."""

from __future__ import annotations

from ._lazy import lazy_getattr

_EXPORTS = {
    "prepare": "cellreasoner.sentences.prepare:prepare",
    "sentences": "cellreasoner.sentences:build_sentences",
    "gene_activity": "cellreasoner.atac:read_atac",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
