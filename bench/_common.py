"""What the bench scripts share: the text table they print, and the gene list in ../shared.

The scripts run as ``python bench/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``_common``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The published ranked gene list beside the project (``../shared``), when present.
SHARED_GENE_LIST = ROOT.parent / "shared" / "data" / "ranked_hvg.list"


def table(rows: list[dict], columns: list[str], *, align: str = "left",
          sep: str = "-+-") -> str:
    """``rows`` as a plain-text table with a header line; a missing value prints empty.

    ``align``: ``"left"``, ``"right"``, or ``"auto"`` (text left, numbers right).
    """
    def text(r: dict, c: str) -> str:
        return str(r.get(c, ""))

    def cell(r: dict, c: str) -> str:
        right = align == "right" or (align == "auto" and not isinstance(r.get(c), str))
        return text(r, c).rjust(widths[c]) if right else text(r, c).ljust(widths[c])

    widths = {c: max(len(c), *(len(text(r, c)) for r in rows)) for c in columns}
    head = " | ".join(c.ljust(widths[c]) for c in columns)
    rule = sep.join("-" * widths[c] for c in columns)
    body = [" | ".join(cell(r, c) for c in columns) for r in rows]
    return "\n".join([head, rule, *body])


def use_shared_gene_list(env: MutableMapping[str, str] | None = None
                         ) -> MutableMapping[str, str]:
    """Point ``CELLREASONER_GENE_LIST`` (in ``env``, default ``os.environ``) at ../shared's
    gene list unless it is set already or the file is absent; returns ``env``."""
    env = os.environ if env is None else env
    if "CELLREASONER_GENE_LIST" not in env and SHARED_GENE_LIST.is_file():
        env["CELLREASONER_GENE_LIST"] = str(SHARED_GENE_LIST)
    return env
