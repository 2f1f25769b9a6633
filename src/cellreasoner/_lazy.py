"""Lazy attribute access, so ``import cellreasoner`` stays fast and light."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(module_name: str, table: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` resolving ``name`` -> ``"module:attribute"`` on first use."""

    def __getattr__(name: str) -> object:
        try:
            target = table[name]
        except KeyError:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}") from None
        mod, _, attr = target.partition(":")
        module = importlib.import_module(mod)
        return getattr(module, attr) if attr else module

    return __getattr__
