"""Response parsing on realistic outputs of CellReasoner models and general chat models."""

from __future__ import annotations

import pytest

from cellreasoner.parsing import clean_label, majority_label, parse_response, split_reasoning

# (raw response, expected label) as fine-tuned and general-purpose models write them
CASES = [
    # CellReasoner direct mode: the bare label
    ("CD14+ Monocyte", "CD14+ Monocyte"),
    ("CD4+/CD45RO+ Memory", "CD4+/CD45RO+ Memory"),
    ("CD8+/CD45RA+ Naive Cytotoxic\n", "CD8+/CD45RA+ Naive Cytotoxic"),
    # reasoning mode, <think> was part of the prompt: only "... </think> answer" comes back
    ("The cell highly expresses LYZ, S100A8 and CD14, classic markers of classical monocytes. "
     "FCGR3A is absent.\n</think>\n\nCD14+ Monocyte", "CD14+ Monocyte"),
    # reasoning mode with both tags in the response
    ("<think>\nGNLY, NKG7 and GZMB indicate cytotoxic lymphocytes; CD3E is not expressed, so "
     "these are NK cells.\n</think>\nCD56+ NK", "CD56+ NK"),
    # general chat models: filler, markdown, quotes, trailing period
    ("**Final answer:** CD19+ B.", "CD19+ B"),
    ("Final Answer: Dendritic", "Dendritic"),
    ("The cell type is a CD8+ T cell.", "CD8+ T cell"),
    ("Cell type: \"NK cell\"", "NK cell"),
    ("Annotation: 'plasma cell'", "plasma cell"),
    ("Based on the marker genes, these cells are most likely B cells.", "B cells"),
    ("## Annotation\n\n**Naive CD4 T**", "Naive CD4 T"),
    ("1. **CD14+ Mono**", "CD14+ Mono"),
    ("Dendritic cell (DC).", "Dendritic cell (DC)"),
    ("classical monocyte (CD14+)", "classical monocyte (CD14+)"),
    ("NK cell. These cells strongly express GNLY and NKG7.", "NK cell"),
    ("The markers point to an immune origin.\nThe answer is:\n\nCD4+/CD25 T Reg",
     "CD4+/CD25 T Reg"),
    ("`Megakaryocyte`", "Megakaryocyte"),
    ("“Platelet”", "Platelet"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_labels_from_realistic_responses(raw, expected):
    assert parse_response(raw).label == expected


def test_reasoning_kept_in_full_when_think_was_in_prompt():
    raw = ("The cell expresses MS4A1, CD79A and CD79B.\nThese are B-cell receptor components.\n"
           "</think>\nCD19+ B")
    parsed = parse_response(raw)
    assert parsed.label == "CD19+ B"
    assert parsed.reasoning == ("The cell expresses MS4A1, CD79A and CD79B.\n"
                                "These are B-cell receptor components.")
    assert parsed.complete


def test_server_reasoning_content_is_the_reasoning():
    parsed = parse_response("CD14+ Monocyte", reasoning="LYZ and CD14 are high.")
    assert parsed.label == "CD14+ Monocyte"
    assert parsed.reasoning == "LYZ and CD14 are high."


def test_truncated_reasoning_is_unknown_and_incomplete():
    parsed = parse_response("<think> The cell expresses CD3E, CD8A and then the budget ran")
    assert parsed.label == "Unknown"  # an incomplete answer is no label (#13)
    assert not parsed.complete
    assert parsed.reasoning.startswith("The cell expresses CD3E")


def test_answer_after_last_close_tag():
    thought, answer, complete = split_reasoning("a </think> b </think> NK")
    assert answer == "NK" and complete
    assert "a" in thought and "b" in thought and "</think>" not in thought


def test_empty_and_filler_only_responses():
    assert parse_response("").label == ""
    assert clean_label("   \n ") == ""
    assert clean_label("**Final answer:**") == ""  # filler only: no label


def test_majority_vote_case_insensitive_first_seen_wins_ties():
    assert majority_label(["NK cell", "nk  cell", "B cell"]) == ("NK cell", 2 / 3, 0)
    assert majority_label(["B cell", "NK cell"]) == ("B cell", 0.5, 0)
    # unparseable samples are disagreeing votes
    label, agreement, idx = majority_label(["", "T cell", ""])
    assert (label, idx) == ("T cell", 1)
    assert agreement == pytest.approx(1 / 3)
    assert majority_label(["", ""]) == ("", 0.0, 0)
