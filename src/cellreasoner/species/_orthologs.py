"""Human <-> mouse orthologs: the Ensembl 105 table CellTypist publishes, plus a short cited
supplement for immune genes that table leaves out.

The table (``Ensembl105_Human2Mouse_Genes.csv``: one ``HUMAN,Mouse`` pair per line, an empty
side where Ensembl has no ortholog) is fetched once with a pinned hash
(:func:`cellreasoner.resources.ortholog_table_path`). It keeps Ensembl's high-confidence
orthologs only, which drops fast-evolving immune genes whose mouse orthologs are not in
doubt (CCL5/Ccl5, CD68/Cd68, GZMB/Gzmb, CD8B/Cd8b1, the MHC class II genes); the supplement
``cellreasoner/data/orthologs_mouse_extra.tsv`` adds those pairs, each with its source. A
supplement row with no mouse symbol drops the table's pairs for that human gene: its only
ortholog there is a paralog that marks other cells in mouse (SIGLEC8 -> Siglece, which mouse
neutrophils carry; the eosinophil Siglec of mouse is Siglec-F).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources as _pkg
from pathlib import Path

from ..errors import InputError


def supplement_path() -> Path:
    """The shipped supplement of orthologs the Ensembl table lacks."""
    return Path(str(_pkg.files("cellreasoner") / "data" / "orthologs_mouse_extra.tsv"))


@dataclass(frozen=True)
class Orthologs:
    """Human -> mouse ortholog pairs.

    Attributes
    ----------
    pairs
        ``(human, mouse)`` symbol pairs: the table's, where the supplement names a human gene
        its pair replaces the table's for that gene.
    supplement
        The pairs that came from the supplement.
    source
        Where the table was read from.
    """

    pairs: tuple[tuple[str, str], ...]
    supplement: frozenset[tuple[str, str]]
    source: str
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def _partners(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        h2m: dict[str, set[str]] = defaultdict(set)
        m2h: dict[str, set[str]] = defaultdict(set)
        for h, m in self.pairs:
            h2m[h].add(m)
            m2h[m].add(h)
        return h2m, m2h

    def one_to_one(self) -> dict[str, str]:
        """Human -> mouse for genes with exactly one partner on each side.

        A pair counts when it is unique both ways in the table, or when its two symbols are
        the same gene name (HGNC and MGI give orthologs the same symbol: CST3/Cst3 among the
        table's Cst3, Cst10), or when it comes from the supplement; a symbol still claimed
        twice after that is left out.
        """
        if "one_to_one" not in self._cache:
            h2m, m2h = self._partners()
            keep = [(h, m) for h, m in self.pairs
                    if (len(h2m[h]) == 1 and len(m2h[m]) == 1) or h.upper() == m.upper()
                    or (h, m) in self.supplement]
            hs = defaultdict(int)
            ms = defaultdict(int)
            for h, m in keep:
                hs[h] += 1
                ms[m] += 1
            self._cache["one_to_one"] = {h: m for h, m in keep if hs[h] == 1 and ms[m] == 1}
        return self._cache["one_to_one"]

    def to_mouse(self) -> dict[str, str]:
        """Human -> mouse for knowledge-base markers: the one-to-one pairs, and a human gene
        whose only mouse ortholog is shared with its paralogs (FCGR3B -> Fcgr4, like FCGR3A):
        a marker of either paralog is evidence from that one mouse gene."""
        if "to_mouse" not in self._cache:
            h2m, _ = self._partners()
            out = {h: next(iter(ms)) for h, ms in h2m.items() if len(ms) == 1}
            out.update(self.one_to_one())
            self._cache["to_mouse"] = out
        return self._cache["to_mouse"]

    @property
    def mouse_symbols(self) -> frozenset[str]:
        """Every mouse symbol in the pairs."""
        return frozenset(m for _, m in self.pairs)

    @property
    def human_symbols(self) -> frozenset[str]:
        """Every human symbol in the pairs."""
        return frozenset(h for h, _ in self.pairs)


def _read_pairs(path: Path, columns: int) -> list[tuple[str, str]]:
    """``(human, mouse)`` pairs of a CSV (the table) or TSV (the supplement, with header);
    a supplement row with an empty mouse side gives ``(human, "")``."""
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    pairs: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader((line for line in fh if not line.startswith("#")),
                                   delimiter=delim))
    except UnicodeDecodeError as exc:
        raise InputError(f"Ortholog table {path} is not UTF-8 text ({exc}); pass the Ensembl "
                         "105 Human2Mouse CSV.") from None
    for lineno, row in enumerate(rows, 1):
        if columns == 3 and lineno == 1:
            continue  # the supplement's header
        if len(row) < 2:
            raise InputError(f"Ortholog table {path}, row {lineno}: expected 'human,mouse' "
                             f"symbols, got {row!r}.")
        h, m = row[0].strip(), row[1].strip()
        if h and (m or columns == 3):
            pairs.append((h, m))
    if not pairs:
        raise InputError(f"Ortholog table {path} has no human,mouse pairs: pass the Ensembl "
                         "105 Human2Mouse CSV (e.g. celltypist/data/samples/).")
    return pairs


@lru_cache(maxsize=4)
def _load(path: str, size: int, mtime: float) -> Orthologs:
    table = _read_pairs(Path(path), 2)
    extra = _read_pairs(supplement_path(), 3)
    replaced = {h for h, _ in extra}  # an empty mouse side: the table's pair is dropped
    pairs = [(h, m) for h, m in dict.fromkeys(table) if h not in replaced]
    extra = [(h, m) for h, m in extra if m]
    pairs.extend(extra)
    return Orthologs(tuple(pairs), frozenset(extra), path)


def load_orthologs(path: str | os.PathLike | None = None) -> Orthologs:
    """The human -> mouse orthologs (read once per file).

    Parameters
    ----------
    path
        A local copy of the Ensembl 105 table; default ``None``: ``$CELLREASONER_ORTHOLOGS``,
        else the cache, else a download with a pinned hash.

    Returns
    -------
    Orthologs
        The table's pairs with the shipped supplement.
    """
    from ..resources import ortholog_table_path

    p = ortholog_table_path(path)
    st = p.stat()
    return _load(str(p), st.st_size, st.st_mtime)


__all__ = ["Orthologs", "load_orthologs", "supplement_path"]
