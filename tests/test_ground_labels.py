"""The one grounding memo (ontology.ground_labels) and the one answer extractor (parsing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellreasoner.errors import InputError
from cellreasoner.ontology import extract_answer, ground_labels, map_label
from cellreasoner.parsing import parse_response


def test_ground_labels_is_map_label_per_distinct_text():
    texts = ["CD14+ Mono", "", "CD14+ Mono", "unknown", None, float("nan"), "B cells",
             "<think>CD79A high</think> B cells."]
    ids, labels = ground_labels(texts)
    assert ids.dtype == object and labels.dtype == object and len(ids) == len(texts)
    for text, cl_id, cl_label in zip(texts, ids, labels, strict=True):
        match = map_label(text) if isinstance(text, str) and text else None
        if match is None or match.id is None:
            assert (cl_id, cl_label) == ("", "")
        else:
            assert (cl_id, cl_label) == (match.id, match.label)
    assert ids[0] == ids[2] == "CL:0001054" and ids[6] == ids[7] == "CL:0000236"
    same = ground_labels(pd.Series(texts, dtype=object))
    assert all(np.array_equal(a, b) for a, b in zip(same, (ids, labels), strict=True))
    empty = ground_labels([])
    assert [len(a) for a in empty] == [0, 0]


@pytest.mark.parametrize("response", [
    "CD14+ Monocyte.", "**Final answer:** NK cell", "<think>x</think> CD14+ Monocyte (classical)",
    "<think> cut off", "Answer: CD8+ T cell. These cells express CD8A.", "- Monocyte\n- B cell",
])
def test_extract_answer_label_style_is_what_parse_response_reports(response):
    assert extract_answer(response, style="label") == parse_response(response).label


def test_extract_answer_styles_differ_where_documented():
    text = "<think>x</think> CD14+ Monocyte (classical)"
    assert extract_answer(text) == "CD14+ Monocyte"  # grounding drops the remark
    assert extract_answer(text, style="label") == "CD14+ Monocyte (classical)"
    with pytest.raises(InputError, match="style"):
        extract_answer(text, style="other")
