"""CSV tables meant for spreadsheets, safe from formula injection (OWASP "CSV Injection").

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return as a formula, so a cell or gene name such as ``=HYPERLINK(...)`` in an annotation CSV
would run when the file is opened. :func:`spreadsheet_safe` prefixes such text values with
``'`` (the spreadsheet's "this is text" mark). Only text is touched: numbers, and text that is
a plain number such as ``-0.5``, stay as they are.

The escape is reversible: a text value that already starts with ``'`` followed by one of those
characters gets one more ``'``, and :func:`unescape_frame` (used where cellreasoner reads its
own CSVs back, e.g. ``evaluate`` on an annotate CSV) removes exactly one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

#: First characters a spreadsheet reads as the start of a formula.
FORMULA_CHARS = "=+-@\t\r"
_NEEDS = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.I)
_FIRST = frozenset(FORMULA_CHARS + "'")


def escape_cell(value):
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if (isinstance(value, str) and value[:1] in _FIRST and _NEEDS.match(value)
            and not _NUMBER.fullmatch(value)):
        return "'" + value
    return value


def unescape_cell(value):
    """The inverse of :func:`escape_cell`."""
    if isinstance(value, str) and value[:1] == "'" and _ESCAPED.match(value):
        return value[1:]
    return value


def _map_text(column: pd.Series, fn) -> pd.Series:
    """``fn`` over the text values of ``column`` (categories of a categorical); others as is."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        cats = column.cat.categories
        new = [fn(c) for c in cats]
        return column if list(new) == list(cats) else column.cat.rename_categories(new)
    if column.dtype != object and not pd.api.types.is_string_dtype(column.dtype):
        return column
    mapped = column.map(fn)
    return column if mapped.equals(column) else mapped


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names cannot run as formulas.

    Parameters
    ----------
    frame
        Any table; numeric, boolean and datetime columns are left unchanged.

    Returns
    -------
    pandas.DataFrame
        ``frame`` itself when nothing needed escaping, else an escaped copy.
    """
    return _map_frame(frame, escape_cell)


def _map_frame(frame: pd.DataFrame, fn) -> pd.DataFrame:
    columns = [frame.iloc[:, i] for i in range(frame.shape[1])]
    mapped = [_map_text(c, fn) for c in columns]
    names = [fn(c) for c in frame.columns]
    if names == list(frame.columns) and all(m is c for m, c in zip(mapped, columns, strict=True)):
        return frame
    out = pd.DataFrame(dict(enumerate(mapped)), index=frame.index)
    out.columns = names
    return out


def unescape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`spreadsheet_safe` on a table read back from one of our CSVs."""
    return _map_frame(frame, unescape_cell)


def write_spreadsheet_csv(frame: pd.DataFrame, path: str | os.PathLike, **to_csv) -> Path:
    """``spreadsheet_safe(frame).to_csv(path, **to_csv)``; returns the path."""
    spreadsheet_safe(frame).to_csv(path, **to_csv)
    return Path(path)


__all__ = ["FORMULA_CHARS", "escape_cell", "spreadsheet_safe", "unescape_cell",
           "unescape_frame", "write_spreadsheet_csv"]
