"""Cell Ontology (CL) index and grounding of free-text cell-type labels and model answers.

:mod:`~cellreasoner.ontology.index` builds and caches the ontology (:func:`get_ontology`);
:mod:`~cellreasoner.ontology.grounding` maps labels to CL terms (:func:`map_label`, memoised).
:func:`extract_answer` is :func:`cellreasoner.parsing.extract_answer`, the one answer extractor.
"""

from ..parsing import extract_answer
from .grounding import LabelMatch, ground_labels, ground_obs, map_label, map_labels
from .index import UNINFORMATIVE, CellOntology, get_ontology, normalize

__all__ = ["CellOntology", "LabelMatch", "UNINFORMATIVE", "extract_answer", "get_ontology",
           "ground_labels", "ground_obs", "map_label", "map_labels", "normalize"]
