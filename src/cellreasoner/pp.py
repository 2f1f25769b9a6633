"""Preprocessing (scanpy ``pp``-style): cell sentences and prompt files."""

from __future__ import annotations

from ._lazy import lazy_getattr

_EXPORTS = {
    "prepare": "cellreasoner.sentences.prepare:prepare",
    "sentences": "cellreasoner.sentences:build_sentences",
}
__getattr__ = lazy_getattr(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
