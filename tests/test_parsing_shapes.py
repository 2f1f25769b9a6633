"""The response shapes real CellReasoner-7B answers show (upstream s03.inference notebook):
cut off at the token limit, stray tags, no </think> but a clear final answer, hedged labels.
The responses below are written for these tests in each shape (not copied from one run)."""

from __future__ import annotations

import pytest

from cellreasoner.annotation.engine import vote
from cellreasoner.backends import Generation
from cellreasoner.parsing import parse_response

LISTING = ("Starting with the list:\n"
           "MS4A6A is involved in immune responses of myeloid cells.\n"
           "LYZ: lysozyme, abundant in monocytes.\n"
           "RPL36A: Ribosomal protein L36")
LISTING_B = ("Let me go through the genes one by one.\n"
             "CD79A: part of the B-cell receptor complex.\n"
             "MS4A1: CD20, a B-cell surface marker.\n"
             "Starting with the list: MS4A6A is involved in")


@pytest.mark.parametrize("text", [LISTING, LISTING_B])
def test_cut_off_by_the_token_limit_is_unknown_and_incomplete(text):
    # the backend says so ...
    cut = parse_response(text, finish_reason="length")
    assert cut.label == "Unknown" and not cut.complete
    # ... and without a finish reason the structure does (reasoning mode: <think> was in
    # the prompt, no </think> came, the text ends inside a listing)
    structural = parse_response(text, reasoning_mode=True)
    assert structural.label == "Unknown" and not structural.complete
    # today's bug: the last line became the label
    assert "RPL36A" not in structural.label and "MS4A6A" not in structural.label


def test_a_direct_answer_cut_at_the_limit_is_incomplete_too():
    text = ("Based on the marker genes provided, this cell type is likely a tumor cell. The "
            "presence of multiple markers associated with tumor cells, such as IGFBP")
    assert parse_response(text, finish_reason="length").label == "Unknown"
    assert parse_response(text, finish_reason="stop").label != "Unknown"


@pytest.mark.parametrize(("text", "label"), [
    ("CD3E and IL7R are high.\n</think>\nNaive CD4+</answer>", "Naive CD4+"),
    ("CD3E and IL7R are high.</think> <answer>Naive CD4+ T cell</answer>",
     "Naive CD4+ T cell"),
    ("MS4A1 and CD79A.</think> thinking again </think>\n\nB cell", "B cell"),
    ("<answer>NK cell</answer>", "NK cell"),
])
def test_stray_tags_are_dropped(text, label):
    parsed = parse_response(text, reasoning_mode=True)
    assert parsed.label == label and parsed.complete and not parsed.unparsed


@pytest.mark.parametrize(("ending", "label"), [
    ("the primary annotation based on the provided markers is:\n\nB cell", "B cell"),
    ("Final answer: CD14+ Monocyte", "CD14+ Monocyte"),
    ("In conclusion, these markers point to one population.\nNK cell", "NK cell"),
])
def test_no_close_tag_but_a_clear_final_answer(ending, label):
    reasoning = ("MS4A1 is a B-cell surface marker. CD79A and CD79B build the B-cell "
                 "receptor.\nCD19 is expressed throughout B-cell development.\nTaking these "
                 "together, ")
    parsed = parse_response(reasoning + ending, reasoning_mode=True)
    assert parsed.label == label and parsed.complete
    assert "CD79A" in parsed.reasoning  # the reasoning is kept, so the evidence check runs


@pytest.mark.parametrize("hedged", ["macrophages or monocytes", "Monocyte/macrophage",
                                    "T cell (possibly NK)"])
def test_hedged_answers_are_kept_for_the_scorer(hedged):
    assert parse_response(f"Weighing CD14 and CD68.</think>\n{hedged}").label == hedged
    assert parse_response(hedged).label == hedged


def test_short_direct_answers_are_untouched():
    for text in ("B cell", "CD14+ Monocyte", "The cell type is NK cell."):
        assert parse_response(text, reasoning_mode=True).complete


def test_the_engine_uses_the_backends_finish_reason():
    cut = vote([Generation(LISTING, meta={"finish_reason": "length"})])
    assert cut.label == "Unknown" and cut.failure == "incomplete"
    assert cut.response == LISTING  # the raw text is kept
    fine = vote([Generation("</think>\nB cell", meta={"finish_reason": "stop"})],
                reasoning=True)
    assert fine.label == "B cell" and fine.failure == ""
    structural = vote([Generation(LISTING)], reasoning=True)
    assert structural.label == "Unknown" and structural.failure == "incomplete"


def test_a_real_models_answer_phrasing():
    # Qwen2.5-Coder-1.5B-Instruct through the gguf backend (bench/real_llm.py) wrote this
    parsed = parse_response("MS4A1 and CD79A point to B cells.\n</think>\nThe cell type name is: "
                            "Lymphocyte")
    assert parsed.label == "Lymphocyte"
