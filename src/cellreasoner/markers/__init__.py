"""Marker tables in, named clusters out: readers, the built-in scoring, model prompts, the
label check and external marker knowledge (CellMarker 2.0, PanglaoDB).

:func:`annotate_markers` (``cr.tl.annotate_markers``, ``cellreasoner annotate-markers``) is the
front door; :func:`read_marker_table` and :func:`filter_markers` read and filter a table.
"""

from .annotate import CHECK_COLUMNS, OUTPUT_COLUMNS, MarkerAnnotation, annotate_markers
from .knowledge import load_knowledge, read_cellmarker, read_panglaodb
from .table import MarkerTable, filter_markers, read_marker_table

__all__ = ["CHECK_COLUMNS", "OUTPUT_COLUMNS", "MarkerAnnotation", "MarkerTable",
           "annotate_markers", "filter_markers", "load_knowledge", "read_cellmarker",
           "read_marker_table", "read_panglaodb"]
