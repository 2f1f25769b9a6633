"""The per-cell result table: answers, Cell Ontology terms and evidence, one row per cell.

Two sources: voted prompt answers (language models; the evidence is checked here against each
cell's own sentence genes) and the columnar :class:`~cellreasoner.backends.CellAnswers` of a
matrix backend (which checked its own evidence).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..backends import CellAnswers
from ..backends.base import PackedAnswers
from ..parsing import clean_label
from .engine import Answer
from .result import FIELDS


def _frame(columns: dict[str, np.ndarray], samples: np.ndarray, prompt_keys: np.ndarray,
           obs_names) -> pd.DataFrame:
    table = pd.DataFrame({f: columns[f] for f in FIELDS},
                         index=pd.Index(np.asarray(obs_names).astype(str), name="cell"))
    table["samples"] = samples
    table["prompt_key"] = prompt_keys
    table["confidence"] = table["confidence"].astype(np.float64)
    table["evidence_fraction"] = table["evidence_fraction"].astype(np.float64)
    table["evidence_flag"] = table["evidence_flag"].astype(bool)
    return table


def _distinct(values: np.ndarray, func) -> np.ndarray:
    """``func`` applied once per distinct value of an object array (labels repeat a lot)."""
    codes, uniq = pd.factorize(values.astype(object, copy=False), use_na_sentinel=False)
    mapped = np.empty(len(uniq), dtype=object)
    mapped[:] = [func(u) for u in uniq]
    return mapped[codes]


def matrix_table(blocks: Sequence[CellAnswers | PackedAnswers], obs_names) -> pd.DataFrame:
    """The table of a matrix backend's answers (one block per chunk of cells, in order; packed
    blocks, as workers send them, are unpacked here).

    The answer text is the label; it is cleaned as a model answer would be, and the single
    sample's label is the ``samples`` entry.
    """
    blocks = [b.unpack() if isinstance(b, PackedAnswers) else b for b in blocks]

    def cat(name: str, dtype=object) -> np.ndarray:
        parts = [np.asarray(getattr(b, name), dtype=dtype) for b in blocks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    response = cat("label")
    label = _distinct(response, lambda t: clean_label(str(t)))
    columns = {
        "label": label,
        "confidence": cat("confidence", np.float64),
        "ontology_id": cat("ontology_id"),
        "ontology_label": cat("ontology_label"),
        "reasoning": _distinct(cat("reasoning"), lambda t: str(t).strip()),
        "response": response,
        "evidence_fraction": cat("evidence_fraction", np.float64),
        "evidence_flag": cat("evidence_flag", bool),
        "cited_present": cat("cited_present"),
        "cited_absent": cat("cited_absent"),
    }
    samples = _distinct(label, lambda t: json.dumps([t]))
    prompt_keys = np.full(len(label), "", dtype=object)
    return _frame(columns, samples, prompt_keys, obs_names)


def prompt_table(answers: list[Answer], cell_answer: np.ndarray, prompt_keys: np.ndarray,
                 obs_names, sentences, per_cell_evidence: bool,
                 vocabulary: Sequence[str]) -> pd.DataFrame:
    """The table of voted prompt answers; ``cell_answer`` maps each cell to its answer.

    Evidence is checked against each cell's own sentence genes. With ``per_cell_evidence``
    (cluster mode: cells of a cluster share the answer but each has its own sentence) every
    (answer, sentence) pair is checked; otherwise cells sharing an answer share its check.
    """
    from ..evidence import check_evidence_many
    from ..ontology import ground_labels

    n = len(cell_answer)
    pair_of: dict[tuple[int, str], int] = {}
    pair_reasoning: list[str] = []
    pair_sentence: list[list[str]] = []
    cell_pair = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        u = int(cell_answer[i])
        if not answers[u].reasoning:
            continue
        key = (u, sentences.sentence(i) if per_cell_evidence else "")
        if key not in pair_of:
            pair_of[key] = len(pair_reasoning)
            pair_reasoning.append(answers[u].reasoning)
            pair_sentence.append(sentences.cell_genes(i))
        cell_pair[i] = pair_of[key]
    ev = None
    if pair_reasoning:
        ev = check_evidence_many(pair_reasoning, pair_sentence, vocabulary=vocabulary)
    # answers the backend did not ground: one map_label lookup per distinct label
    grounded = zip(*ground_labels([a.label for a in answers if a.ontology is None]),
                   strict=True)
    ontology = [a.ontology if a.ontology is not None else next(grounded) for a in answers]
    cols: dict[str, list] = {f: [None] * n for f in FIELDS}
    for i in range(n):
        a = answers[cell_answer[i]]
        oid, olabel = ontology[cell_answer[i]]
        k = cell_pair[i]
        if k >= 0 and ev is not None and ev["n_cited"].iat[k] > 0:
            evidence = (float(ev["fraction_present"].iat[k]), bool(ev["flagged"].iat[k]),
                        ev["present"].iat[k], ev["absent"].iat[k])
        else:  # nothing cited: no evidence to judge
            evidence = (math.nan, False, "", "")
        row = (a.label, a.confidence, oid, olabel, a.reasoning, a.response, *evidence)
        for f, v in zip(FIELDS, row, strict=True):
            cols[f][i] = v
    sample_json = [json.dumps(a.samples) for a in answers]
    samples = np.asarray([sample_json[u] for u in cell_answer], dtype=object)
    arrays = {f: np.asarray(v, dtype=object) for f, v in cols.items()}
    table = _frame(arrays, samples, prompt_keys, obs_names)
    if any(a.failure for a in answers):  # only then: runs without failures keep their columns
        failure = np.asarray([a.failure for a in answers], dtype=object)
        table["failure"] = failure[np.asarray(cell_answer, dtype=np.int64)]
    return table

