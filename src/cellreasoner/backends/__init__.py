"""Annotation backends, discovered by name (one file each, one protocol)."""

from __future__ import annotations

import importlib

from ..errors import InputError
from .base import (
    Backend,
    Capabilities,
    CellAnswers,
    Generation,
    ProgressCallback,
    ResultCallback,
    RunContext,
)

#: registry name -> "module:Class" (modules are imported lazily, heavy deps stay optional)
BACKENDS: dict[str, str] = {
    "builtin": "cellreasoner.backends.builtin:BuiltinBackend",
    "transformers": "cellreasoner.backends.transformers:TransformersBackend",
    "vllm": "cellreasoner.backends.vllm:VLLMBackend",
    "openai": "cellreasoner.backends.openai:OpenAIBackend",
    "gguf": "cellreasoner.backends.gguf:GGUFBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name`` (imported lazily; unknown names raise
    :class:`~cellreasoner.errors.InputError`)."""
    if name not in BACKENDS:
        raise InputError(
            f"Unknown backend '{name}'. Choose one of: {', '.join(sorted(BACKENDS))}."
        )
    module_name, cls_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def get_backend(name: str | Backend = "builtin", **options) -> Backend:
    """Instantiate a backend by registry name (or pass a ready :class:`Backend` through).

    Parameters
    ----------
    name
        A name of :data:`BACKENDS` (default ``"builtin"``) or a ready backend.
    **options
        Keyword arguments of the backend's constructor.

    Returns
    -------
    Backend
        The backend (``name`` itself when it already is one).
    """
    if isinstance(name, Backend):
        return name
    return backend_class(name)(**options)


__all__ = [
    "BACKENDS", "Backend", "Capabilities", "CellAnswers", "Generation", "ProgressCallback",
    "ResultCallback", "RunContext", "backend_class", "get_backend",
]
