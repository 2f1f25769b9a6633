"""Species: which one the data is (read from the symbols' case), human <-> mouse orthologs,
and the built-in knowledge base for mouse.

Mouse data keeps its own symbols everywhere: the built-in reasoner reads it through a
knowledge base translated to mouse symbols (:func:`mouse_marker_db`), and model prompts order
the mouse genes by the published ranked list through the orthologs
(:func:`species_gene_list`), so a cell sentence says ``Cd3e``, as the data does.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from ._detect import CHOICES, SPECIES, Detection, detect_species, resolve_species
from ._markers import mouse_marker_db, mouse_marker_path
from ._orthologs import Orthologs, load_orthologs, supplement_path


def species_gene_list(genes: Sequence[str], species: str,
                      orthologs: Orthologs | None = None) -> list[str]:
    """A ranked gene list (human symbols) in ``species``' symbols, its order kept.

    Parameters
    ----------
    genes
        The list, e.g. the published ranked 10,000 genes.
    species
        ``"human"`` (returned as given) or ``"mouse"`` (one-to-one orthologs; genes without
        one are left out).
    orthologs
        Default ``None``: :func:`load_orthologs`.

    Returns
    -------
    list of str
        The mouse symbols in the list's order.
    """
    if species == "human":
        return list(genes)
    o2o = (orthologs or load_orthologs()).one_to_one()
    out = [o2o[g] for g in genes if g in o2o]
    if not out:
        raise InputError(f"None of the {len(genes)} genes of the gene list has a one-to-one "
                         "mouse ortholog: pass a gene list in human symbols, or your own "
                         "mouse list with --gene-list.")
    return out


def species_vocabulary(genes: Sequence[str], species: str, data_genes: Sequence[str], *,
                       translate: bool = True, source: str = "the data") -> list[str]:
    """A run's gene vocabulary for data of ``species`` (what ``annotate`` and ``prepare`` use).

    Parameters
    ----------
    genes
        The run's gene list (the published ranked list, or one the user gave).
    species
        The data's species.
    data_genes
        The data's gene symbols; mouse runs refuse data without a mouse symbol.
    translate
        Map ``genes`` (human symbols) to mouse with :func:`species_gene_list` (default
        ``True``: for the published list); ``False`` keeps a list the user gave as it is.
    source
        Name of the input in messages.

    Returns
    -------
    list of str
        The vocabulary, in the data's symbols.
    """
    if species == "human":
        return list(genes)
    orthologs = load_orthologs()
    check_mouse_symbols(data_genes, orthologs, source)
    return species_gene_list(genes, species, orthologs) if translate else list(genes)


def check_mouse_symbols(genes: Sequence[str], orthologs: Orthologs,
                       source: str = "the data") -> None:
    """Refuse mouse runs on data holding no mouse symbol (human data, or Ensembl ids).

    Parameters
    ----------
    genes
        The data's gene symbols.
    orthologs
        From :func:`load_orthologs`; a symbol counts as mouse when it is a mouse ortholog
        written unlike every human symbol (``Cd3e``, not ``5S_rRNA``).
    source
        Name of the input in the message.

    Returns
    -------
    None
    """
    mouse = orthologs.mouse_symbols - orthologs.human_symbols
    have = {str(g) for g in genes}
    if have & mouse:
        return
    examples = ", ".join(list(map(str, genes))[:4])
    raise InputError(
        f"{source}: none of its {len(have):,} genes (e.g. {examples}) is a mouse gene symbol "
        "(Cd3e style). If the data is human, pass --species human (species='human') or "
        "--species auto; if it holds Ensembl ids, use the var column with gene symbols.")


__all__ = ["CHOICES", "SPECIES", "Detection", "Orthologs", "check_mouse_symbols",
           "detect_species", "load_orthologs", "mouse_marker_db", "mouse_marker_path",
           "resolve_species", "species_gene_list", "species_vocabulary", "supplement_path"]
