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


#: What a run may hold beside the cached input (the Ray runs' peak: 5 GiB).
RUN_MEMORY = 6 << 30


def settle(path: Path) -> bool:
    """The same start for every timed run on ``path``: earlier runs' writes flushed to disk
    (``os.sync``), then the file read through once, untimed, so that it is in the page cache.

    Without it a run's speed depends on the runs before it: an output written, or a run that
    held more memory, evicts part of the input, and the next run reads it from disk (at a
    million cells, 11 GiB: pass one of one run measured 39 s from disk, 23 s from the cache).
    Returns whether the file is cached: ``False`` for one that would not fit beside a run's
    memory (:data:`RUN_MEMORY`), which the run then reads from disk.
    """
    import psutil

    os.sync()
    size = path.stat().st_size
    if size + RUN_MEMORY > psutil.virtual_memory().available:
        return False
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        block = bytearray(16 << 20)
        while f.readinto(block):
            continue
    return True
