"""The built-in marker reasoner: the no-download default backend.

:class:`BuiltinBackend` answers like a model would, from a marker knowledge base
(:mod:`.markers`), a hierarchical marker reasoner (:mod:`.reasoner`) with its self-training
refinement (:mod:`.refine`) and a vectorised reasoning-trace writer (:mod:`.traces`).
"""

from __future__ import annotations

from .backend import BuiltinBackend

__all__ = ["BuiltinBackend"]
