"""Turn a model's raw response into a clean cell-type label and its reasoning.

CellReasoner models answer either directly (``"CD14+ Monocyte"``) or, in reasoning mode, with
``<think> ... </think> answer``. In reasoning mode the ``<think>`` is part of the *prompt*, so
the response often holds only ``... </think> answer``. Servers may also return the reasoning in a
separate ``reasoning_content`` field (:attr:`Generation.reasoning`). General chat models add
filler ("The cell type is", "**Final answer:**", quotes, a final period); it is removed here.

This module is the one place that gets the answer out of a model response:
:func:`extract_answer` with ``style="label"`` gives the label annotation reports (what
:func:`parse_response` stores), with ``style="grounding"`` the phrase the Cell Ontology grounding
(:func:`cellreasoner.ontology.map_label`) looks up. The two readings differ on purpose (see
:func:`extract_answer`).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import InputError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

#: Phrases that introduce the answer; the label is what follows the last one.
_ANSWER_MARKERS = re.compile(
    r"(?:final\s+(?:annotation(?:\s+result)?|answer|cell\s*type|label)"
    r"|(?:predicted|annotated|most\s+likely)\s+cell\s*type"
    r"|cell\s*type\s+annotation|annotation\s+result|cell\s*type(?:\s+name)?|annotation"
    r"|answer|label)"
    r"\s*(?:\*\*|__)?\s*(?:is|would\s+be|:|=|-)\s*:?\s*",
    re.IGNORECASE,
)
#: Sentence openers that introduce the answer without a marker word.
_LEADING_FILLER = re.compile(
    r"^(?:based\s+on\s+[^,]*,\s*|therefore,?\s*|thus,?\s*|so,?\s*|hence,?\s*"
    r"|in\s+conclusion,?\s*)?"
    r"(?:(?:these|this|the)\s+(?:cells?|cluster)\s+(?:is|are|appears?\s+to\s+be)\s+)?"
    r"(?:(?:most|very)\s+)?(?:likely|probably|consistent\s+with)?\s*(?:to\s+be\s+)?"
    r"(?:(?:an?|the)\s+(?=\S))?",
    re.IGNORECASE,
)
_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*|^\s*(?:[-*+]|\d+[.)])\s+", re.MULTILINE)
_QUOTES = "\"'“”‘’«»"
_TRAILING = ".,;:!?。 \t"

#: What an answer that does not parse to a cell type is labelled.
UNPARSED_LABEL = "Unknown"
#: A label is short: longer (in characters, or words) it is prose or garbage, not a cell type.
#: Real labels from 1,700 distinct model answers (``pair_scores_dev.csv``) are at most 96
#: characters; the sentences the cleaner leaves from rambling answers are longer or wordier.
MAX_LABEL_CHARS = 100
MAX_LABEL_WORDS = 12
#: Letters/digits in a row without a separator: the longest in those real labels is 28.
MAX_LABEL_RUN = 40
#: Characters of code, markup and random text that no cell-type name uses.
_NOT_IN_LABELS = frozenset("<>{}[]|\\^~=@#$%*`")
_RUN = re.compile(rf"[^\W_]{{{MAX_LABEL_RUN + 1},}}")


@dataclass(frozen=True)
class ParsedResponse:
    """A parsed model response.

    Attributes
    ----------
    label
        The clean final label; ``"Unknown"`` when the response is incomplete (cut off at the
        token limit or inside ``<think>``), ``""`` when it is empty.
    reasoning
        The reasoning text (without the tags), ``""`` when there is none.
    answer
        The raw answer part (after ``</think>``), before cleaning.
    complete
        ``False`` when the response was cut off (token limit, unclosed ``<think>``, a
        reasoning text with no final answer).
    unparsed
        ``True`` when the answer does not parse to a cell type (see :func:`is_label`); the
        label is then :data:`UNPARSED_LABEL` (``"Unknown"``) and the raw text stays in
        ``answer``.
    """

    label: str
    reasoning: str
    answer: str
    complete: bool = True
    unparsed: bool = False


def split_reasoning(text: str, reasoning: str | None = None) -> tuple[str, str, bool]:
    """Split a response into ``(reasoning, answer, complete)``.

    The answer is what follows the last ``</think>``; the reasoning is what precedes it (an
    opening ``<think>`` is dropped, and may be absent when it was part of the prompt). A
    server-provided ``reasoning`` (``reasoning_content``) is put first. An unclosed ``<think>``
    gives an empty answer and ``complete=False``.
    """
    text = text or ""
    parts: list[str] = []
    if reasoning:
        parts.append(reasoning.strip())
    complete = True
    if THINK_CLOSE in text:
        before, _, answer = text.rpartition(THINK_CLOSE)
        parts.append(before.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ").strip())
    elif THINK_OPEN in text:
        before, _, inside = text.partition(THINK_OPEN)
        parts.append(inside.strip())
        answer = before  # text before an unclosed <think> (rare) is still an answer
        complete = bool(before.strip())
    else:
        answer = text
    return "\n".join(p for p in parts if p), answer.strip(), complete


def _balanced_strip(label: str) -> str:
    """Drop trailing punctuation and unbalanced closing brackets."""
    while True:
        old = label
        label = label.strip().rstrip(_TRAILING).strip()
        if len(label) >= 2 and label[0] in _QUOTES and label[-1] in _QUOTES:
            label = label[1:-1]
        label = label.strip(_QUOTES).strip()
        if label.endswith(")") and label.count("(") < label.count(")"):
            label = label[:-1]
        if label == old:
            return label


@functools.lru_cache(maxsize=65536)  # answers repeat a lot across cells
def clean_label(answer: str) -> str:
    """Reduce an answer text to the bare label.

    Removes markdown (bold, code, headings, bullets), quotes, a trailing period and filler such
    as "Final answer:", "The cell type is", "Cell type:", "Annotation:", "These cells are most
    likely". When the answer spans several lines the line after the last answer marker is used,
    otherwise the last non-empty line.
    """
    text = _MARKDOWN.sub("", answer or "").strip()
    if not text:
        return ""
    if not _ANSWER_MARKERS.sub("", text).strip(_TRAILING + _QUOTES + "\n"):
        return ""  # only filler ("Final answer:"), no label
    matches = list(_ANSWER_MARKERS.finditer(text))
    # a marker at the very end ("The answer is:") leaves nothing; use the last useful one
    matches = [m for m in matches if text[m.end():].strip(_TRAILING + _QUOTES)]
    if matches:
        text = text[matches[-1].end():]
        lines = [ln for ln in text.splitlines() if ln.strip(_TRAILING + _QUOTES + " ")]
        text = lines[0] if lines else ""
    else:
        lines = [ln for ln in text.splitlines() if ln.strip(_TRAILING + _QUOTES + " ")]
        text = lines[-1] if lines else ""
    text = _balanced_strip(text)
    text = _LEADING_FILLER.sub("", text, count=1)
    # a label followed by an explanation sentence: "NK cell. These cells express ..."
    first = re.split(r"(?<=[a-z0-9)+\-])\.\s+(?=[A-Z])", text, maxsplit=1)[0]
    return _balanced_strip(first)


def is_label(label: str) -> bool:
    """Whether a cleaned answer has the shape of a cell-type label (a structural test).

    A label is at most :data:`MAX_LABEL_CHARS` (100) characters and :data:`MAX_LABEL_WORDS`
    (12) words, has at least one letter, no control, format or private-use character (Unicode
    category C), none of the code/markup characters ``< > { } [ ] | \\ ^ ~ = @ # $ % * ` ``, and
    no run of more than :data:`MAX_LABEL_RUN` (40) letters/digits without a space or
    punctuation. Everything else (a whole paragraph, 2 MB of random text, mojibake) is not a
    label, whatever its words. ``""`` (no answer at all) is not a label either.
    """
    if not label or len(label) > MAX_LABEL_CHARS or len(label.split()) > MAX_LABEL_WORDS:
        return False
    if not any(c.isalpha() for c in label) or _RUN.search(label):
        return False
    return not any(c in _NOT_IN_LABELS or unicodedata.category(c)[0] == "C" for c in label)


#: Tags a model may leave in its answer (``<answer>...</answer>``, ``Naive CD4+</answer>``,
#: a second ``</think>``): dropped before the label is read.
_STRAY_TAG = re.compile(r"</?\s*[A-Za-z][\w-]*\s*/?>")
#: A response this long (or with this many lines) without any think tag is a reasoning text
#: whose opening ``<think>`` was in the prompt, not a direct answer.
_REASONING_CHARS = 400
_REASONING_LINES = 3
#: What introduces a final answer at the end of a reasoning text ("... is:", "Final answer").
_INTRODUCES = re.compile(r"(?::\s*$|\b(?:final|conclusion|answer|annotation|therefore|thus|"
                         r"in summary|overall)\b)", re.IGNORECASE)


def _final_answer(text: str) -> tuple[str, str] | None:
    """``(reasoning, answer)`` of a reasoning text that never closed ``</think>`` but ends on
    a clear final answer: a short last line that is a label, introduced by the line before
    it ("... the primary annotation based on the provided markers is:") or by its own
    marker ("Final answer: B cell"). ``None`` when it ends anywhere else (cut off in the
    middle of a gene-by-gene listing, say)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return None
    last = lines[-1].strip()
    label = clean_label(last)
    if not label or not is_label(label) or len(label.split()) > 8:
        return None
    own_marker = _ANSWER_MARKERS.search(last) is not None
    if own_marker or _INTRODUCES.search(lines[-2]):
        return "\n".join(lines[:-1]).strip(), last
    return None


def _answer_parts(text: str, reasoning: str | None, finish_reason: str | None,
                  reasoning_mode: bool) -> tuple[str, str, bool]:
    """:func:`split_reasoning`, plus what real responses need: an answer cut off at the
    token limit (``finish_reason="length"``) is incomplete; in reasoning mode (``<think>``
    in the prompt) a long text with no think tag at all is reasoning whose answer is its
    clear final line, else incomplete."""
    thought, answer, complete = split_reasoning(text, reasoning)
    if finish_reason == "length":
        return thought or answer, answer, False
    raw = text or ""
    if reasoning_mode and complete and THINK_OPEN not in raw and THINK_CLOSE not in raw:
        n_lines = sum(1 for ln in raw.splitlines() if ln.strip())
        if n_lines >= _REASONING_LINES or len(raw) > _REASONING_CHARS:
            found = _final_answer(_STRAY_TAG.sub(" ", raw))
            if found is None:
                return "\n".join(p for p in (thought, answer) if p), answer, False
            before, answer = found
            thought = "\n".join(p for p in ((reasoning or "").strip(), before) if p)
    return thought, answer, complete


def _label_of(answer: str) -> tuple[str, bool]:
    """``(label, unparsed)`` of an answer text: its clean label, or "Unknown" when the
    clean text is not a label (an empty answer stays ``""``: nothing was answered)."""
    label = clean_label(_STRAY_TAG.sub(" ", answer))
    if label and not is_label(label):
        return UNPARSED_LABEL, True
    return label, False


# --- the grounding reading of an answer (used by cellreasoner.ontology) ----------------------
_CLOSE_TAG = re.compile(r"</\s*[a-z]+\s*>", re.I)
_OPEN_TAG = re.compile(r"<\s*[a-z]+\s*>", re.I)
_FILLER = re.compile(
    r"^(?:final\s+)?(?:answer|annotation|cell\s*type|prediction|result|label)s?\s*(?:is|:|-)\s*"
    r"|^(?:the\s+)?(?:final\s+)?(?:cell\s*type|annotation|answer)\s+(?:is|would\s+be)\s+"
    r"|^(?:these|this|the)\s+(?:cells?|cluster)\s+(?:is|are)\s+(?:most\s+)?(?:likely\s+)?"
    r"|^(?:most\s+)?likely\s+|^probably\s+|^possibly\s+|^(?:an?|the)\s+",
    re.I,
)
_ANSWER_IN_PROSE = re.compile(
    r"(?:final\s+(?:answer|annotation)|(?:cell\s+type|annotation|answer)\s+(?:should\s+be|"
    r"would\s+be|is)|annotated?\s+as|most\s+likely\s+"
    r"(?:to\s+be\s+)?|therefore,?\s+(?:the\s+)?(?:cells?\s+(?:is|are)\s+)?)[:\s]*"
    r"\**\s*([A-Za-z0-9+⁺/ _-]{2,60}?)\s*(?:\*\*|[.\n,;]|$)",
    re.I,
)
_MAX_WORDS = 12


def _grounding_answer(text: str) -> str:
    """:func:`extract_answer`'s ``style="grounding"`` reading of a whole response."""
    s = str(text).replace("\r", "")
    parts = [p.strip() for p in _CLOSE_TAG.split(s)]
    parts = [_OPEN_TAG.sub(" ", p).strip() for p in parts]
    short = [p for p in parts if p and len(p.split()) <= _MAX_WORDS]
    if parts and parts[-1] and parts[-1] in short:
        cand = parts[-1]
    elif short:
        cand = short[0]
    else:
        hits = _ANSWER_IN_PROSE.findall(s)
        cand = hits[-1] if hits else ""
    cand = cand.strip().splitlines()[0] if cand.strip() else ""
    for _ in range(3):  # a short sentence: "Therefore, the annotation should be B cells."
        hits = _ANSWER_IN_PROSE.findall(cand) if len(cand.split()) > 3 else []
        if not hits or hits[-1] == cand:
            break
        cand = hits[-1]
    outside = re.sub(r"\([^)]*\)", " ", cand).strip()
    if outside:
        cand = re.sub(r"\s+", " ", outside)
    for _ in range(3):
        new = _FILLER.sub("", cand.strip(" \t\"'`*#:.;,!?")).strip()
        if new == cand:
            break
        cand = new
    return cand.strip(" \t\"'`*#:.;,!?")


def extract_answer(text: str, *, style: Literal["grounding", "label"] = "grounding") -> str:
    """The final answer in a whole model response (reasoning and all).

    Parameters
    ----------
    text
        A model response, possibly with ``<think>...</think>`` reasoning before the answer.
    style
        ``"grounding"`` (default; what :func:`cellreasoner.ontology.map_label` looks up): the
        text after the last closing tag of any name when it is short (at most 12 words), else
        the first short tag-delimited part, else the phrase after "final answer", "the cell
        type is", ... in the prose; a parenthesised remark is dropped
        (``"CD14+ Monocyte (classical)"`` -> ``"CD14+ Monocyte"``); ``""`` when no answer is
        found. ``"label"`` (what :func:`parse_response` reports as the label): the text after
        the last ``</think>``, ``""`` when the response stopped inside ``<think>``, cleaned by
        :func:`clean_label` (markdown, filler and answer markers removed, parentheses kept);
        ``"Unknown"`` when the cleaned text is not a label (:func:`is_label`).

    Returns
    -------
    str
        The answer text, ``""`` when there is none.
    """
    if style == "grounding":
        return _grounding_answer(text)
    if style == "label":
        _, answer, complete = _answer_parts(text, None, None, True)
        return _label_of(answer)[0] if complete else UNPARSED_LABEL
    raise InputError(f"extract_answer: style must be 'grounding' or 'label', not {style!r}")


def parse_response(text: str, reasoning: str | None = None, *,
                   finish_reason: str | None = None,
                   reasoning_mode: bool = False) -> ParsedResponse:
    """Parse one response (``Generation.text``, ``Generation.reasoning`` and the backend's
    ``finish_reason``).

    An incomplete response (cut off at the token limit: ``finish_reason="length"``; stopped
    inside an unclosed ``<think>``; or, with ``reasoning_mode`` (the prompt ended with
    ``"<think> "``), a long text with no think tag that never reaches a clear final
    answer) is labelled "Unknown" with ``complete=False``, the raw text kept. Such a text
    that ends on a clear final answer keeps its reasoning and takes that answer. Stray tags
    (``<answer>``, ``</answer>``, a second ``</think>``) are dropped. Hedged answers
    ("macrophages or monocytes") are kept as labels: the scorer decides.
    """
    thought, answer, complete = _answer_parts(text, reasoning, finish_reason, reasoning_mode)
    label, unparsed = _label_of(answer) if complete else (UNPARSED_LABEL, False)
    return ParsedResponse(label=label, reasoning=thought, answer=answer, complete=complete,
                          unparsed=unparsed)


def normalize_label(label: str) -> str:
    """A comparison key for voting: lower case, single spaces."""
    return " ".join(label.lower().split())


def majority_label(labels: Sequence[str]) -> tuple[str, float, int]:
    """Self-consistency vote.

    Parameters
    ----------
    labels
        One label per sample; empty labels (unparseable samples) count as disagreeing votes.

    Returns
    -------
    tuple
        ``(label, agreement, index)``: the most common label (compared case- and
        space-insensitively; ties go to the label seen first), the fraction of all samples that
        agree with it, and the index of its first sample. ``("", 0.0, 0)`` when no sample has
        a label.
    """
    if not labels:
        return "", 0.0, 0
    keys = [normalize_label(x) for x in labels]
    counts = Counter(k for k in keys if k)
    if not counts:
        return "", 0.0, 0
    best = max(counts.values())
    for i, k in enumerate(keys):
        if k and counts[k] == best:
            return labels[i], best / len(labels), i
    raise AssertionError("unreachable")  # pragma: no cover
