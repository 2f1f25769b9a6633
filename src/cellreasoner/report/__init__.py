"""The offline HTML report of one annotation run (:func:`write_report`, :func:`build_report`).

The page's HTML, CSS and script are package data under ``templates/``.
"""

from __future__ import annotations

from ._build import DEFAULT_MAX_CELLS, build_report, write_report

__all__ = ["DEFAULT_MAX_CELLS", "build_report", "write_report"]
