"""Cell Ontology (CL) grounding (being split into index and grounding modules)."""

from .grounding import (
    UNINFORMATIVE,
    CellOntology,
    LabelMatch,
    extract_answer,
    get_ontology,
    ground_obs,
    map_label,
    map_labels,
    normalize,
)

__all__ = ["CellOntology", "LabelMatch", "UNINFORMATIVE", "extract_answer", "get_ontology",
           "ground_obs", "map_label", "map_labels", "normalize"]
