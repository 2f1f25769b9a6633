"""User-facing errors: one clear message naming the file/field and what to do."""

from __future__ import annotations


class CellReasonerError(Exception):
    """Base class for every error cellreasoner reports to a user.

    The message is complete on its own: the CLI prints it without a traceback.
    """


class InputError(CellReasonerError, ValueError):
    """The user's input (file, column, layer, option) cannot be used as given."""


class MissingDependencyError(CellReasonerError, ImportError):
    """An optional extra is needed for the requested feature."""


class BackendError(CellReasonerError, RuntimeError):
    """A model backend failed (server unreachable, unknown model, generation error)."""


class OutputError(CellReasonerError, RuntimeError):
    """An output cannot be written (folder, permissions, disk space, another run writing it).

    Nothing partial is left behind; a previous file at that path is unchanged.
    """


def require(module: str, extra: str, feature: str):
    """Import ``module`` lazily, or raise a message that names the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the optional package '{module.split('.')[0]}'. "
            f"Install it with: pip install 'cellreasoner[{extra}]'"
        ) from exc
