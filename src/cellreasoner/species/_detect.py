"""Which species the data's gene symbols come from, read from their case.

HGNC (human) symbols are upper case (``CD3E``, ``HLA-DRA``, ``MT-CO1``); MGI (mouse) symbols
start with a capital and continue in lower case (``Cd3e``, ``H2-Ab1``, ``mt-Co1``,
``1700028K03Rik``). Ensembl ids say it outright (``ENSG`` / ``ENSMUSG``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError

log = logging.getLogger(__name__)

#: Species the product knows, and ``"auto"`` (read them from the symbols).
SPECIES = ("human", "mouse")
CHOICES = ("auto", *SPECIES)
#: Common ways of naming them.
SYNONYMS = {"hs": "human", "homo_sapiens": "human", "homo sapiens": "human", "hsa": "human",
            "mm": "mouse", "mus_musculus": "mouse", "mus musculus": "mouse", "mmu": "mouse"}
#: Share of case-informative symbols that must be mouse-style for ``auto`` to say mouse.
MOUSE_SHARE = 0.6
#: Symbols looked at (the first ones suffice, and keep detection instant at atlas scale).
SAMPLE = 20_000

_HUMAN_ORF = re.compile(r"^C\d+orf\d+$|^C[XY]orf\d+$")  # HGNC open reading frames: C1orf56


@dataclass(frozen=True)
class Detection:
    """The species a run uses and how it was decided (recorded in the provenance)."""

    species: str
    how: str

    def __str__(self) -> str:
        return f"{self.species} ({self.how})"


def _style(symbol: str) -> str | None:
    """``"human"``, ``"mouse"`` or ``None`` (the symbol's case says nothing)."""
    s = symbol.strip()
    if s.startswith("ENSMUSG"):
        return "mouse"
    if s.startswith("ENSG"):
        return "human"
    if _HUMAN_ORF.match(s):
        return "human"
    letters = [c for c in s if c.isalpha()]
    if len(letters) < 2:
        return None
    if s.startswith("mt-"):
        return "mouse"
    if all(c.isupper() for c in letters):
        return "human"
    if s[0].isupper() and any(c.islower() for c in letters[1:]):
        return "mouse"
    return None


def detect_species(genes: Iterable[str]) -> Detection:
    """Read the species from the case of the gene symbols.

    Parameters
    ----------
    genes
        The data's gene symbols (``adata.var_names``).

    Returns
    -------
    Detection
        ``mouse`` when at least :data:`MOUSE_SHARE` of the symbols whose case is informative
        are mouse-style (``Cd3e``), else ``human``; ``how`` gives the counts.
    """
    counts = {"human": 0, "mouse": 0}
    for i, g in enumerate(genes):
        if i >= SAMPLE:
            break
        style = _style(str(g))
        if style is not None:
            counts[style] += 1
    informative = counts["human"] + counts["mouse"]
    if not informative:
        return Detection("human", "auto: no symbol's case is informative; human assumed")
    share = counts["mouse"] / informative
    species = "mouse" if share >= MOUSE_SHARE else "human"
    return Detection(species, f"auto: {counts['mouse']:,} of {informative:,} symbols "
                              f"mouse-style (Cd3e), {counts['human']:,} human-style (CD3E)")


def resolve_species(species: str | None, genes: Iterable[str]) -> Detection:
    """The run's species: the one given, or (``"auto"``/``None``) the detected one (logged).

    Parameters
    ----------
    species
        ``"human"``, ``"mouse"``, ``"auto"`` or ``None`` (= auto); synonyms such as ``"mm"``
        or ``"Mus musculus"`` are accepted.
    genes
        The data's gene symbols, read when detecting.

    Returns
    -------
    Detection
        The species and how it was decided.
    """
    name = "auto" if species is None else str(species).strip().lower()
    name = SYNONYMS.get(name, SYNONYMS.get(name.replace("-", "_"), name))
    if name not in CHOICES:
        raise InputError(f"Unknown species {species!r}: use one of {', '.join(CHOICES)} "
                         "(--species).")
    if name != "auto":
        return Detection(name, "given")
    found = detect_species(genes)
    log.info("species: %s", found)
    return found


__all__ = ["CHOICES", "SPECIES", "Detection", "detect_species", "resolve_species"]
