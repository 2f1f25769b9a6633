"""Marker-table prompts for model backends, and reading their answers back per cluster.

Two prompt styles:

- ``"cellreasoner"`` / ``"neutral"`` (see :mod:`cellreasoner.prompts`): a cluster's ranked
  markers as one ``", "``-joined sentence, the layout of the cluster prompts of ``annotate``;
- ``"gptcelltype"``: the instruction of GPTCelltype (Hou & Ji 2024, Nat Methods; its
  ``gptcelltype()`` R function): "Identify cell types of TISSUE cells using the following
  markers separately for each row. ..." followed by one ``cluster:gene1,gene2,...`` row per
  cluster, answered one line per row.

Several clusters per call (``clusters_per_call``) use the row layout in either the neutral or
the GPTCelltype style; the published CellReasoner format is one cluster per prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import InputError
from ..parsing import UNPARSED_LABEL, majority_label, parse_response
from ..prompts import Prompt

#: Prompt styles of ``annotate_markers`` (``"auto"`` as in :func:`resolve_prompt_style`).
MARKER_PROMPT_STYLES = ("auto", "cellreasoner", "neutral", "gptcelltype")
#: GPTCelltype's default number of top genes per cluster.
GPTCELLTYPE_TOP = 10


def gptcelltype_instruction(tissue: str | None) -> str:
    """GPTCelltype's instruction (its line breaks joined into spaces)."""
    where = tissue.strip() if tissue and tissue.strip() else "human"
    return (f"Identify cell types of {where} cells using the following markers separately for "
            "each row. Only provide the cell type name. Do not show numbers before the name. "
            "Some can be a mixture of multiple cell types.")


def rows_instruction(reasoning: bool, tissue: str | None) -> str:
    """The neutral instruction for several clusters in one prompt (one answer line each)."""
    where = f" from human {tissue.strip()} tissue" if tissue and tissue.strip() else ""
    text = ("You are an expert in single-cell transcriptomics. Each row the user sends is one "
            f"cluster of cells{where}: its name, a colon, and its top marker genes, most "
            "specific first. Identify the cell type of every cluster. ")
    if reasoning:
        text += "Reason inside <think></think>; after </think> "
    return text + ("answer with exactly one line per row, in the same order, written "
                   "'name: cell type', and nothing else.")


def build_prompts(lists: dict[str, list[str]], *, style: str, instruction: str,
                  reasoning: bool, clusters_per_call: int) -> list[tuple[Prompt, list[str]]]:
    """The prompts of a table and the clusters each one asks about, in order."""
    names = list(lists)
    per = int(clusters_per_call)
    if per < 1:
        raise InputError(f"clusters_per_call must be at least 1, not {clusters_per_call}.")
    if per > 1 and style == "cellreasoner":
        raise InputError("The CellReasoner prompt style asks one cluster per prompt (the "
                         "format the published models were trained on); use "
                         "--prompt-style gptcelltype or neutral with --clusters-per-call > 1.")
    rows = style == "gptcelltype" or per > 1
    out = []
    for lo in range(0, len(names), per):
        group = names[lo:lo + per]
        if rows:
            text = "\n".join(f"{c}:{','.join(lists[c])}" for c in group)
        else:
            text = ", ".join(lists[group[0]])
        out.append((Prompt(instruction, text, reasoning), group))
    return out


_LEAD = re.compile(r"^\s*(?:[-*•]\s*|\d+\s*[.):]\s*|row\s*\d+\s*[.):]\s*)", re.I)


def split_rows(text: str, reasoning: str | None, clusters: Sequence[str], *,
               reasoning_mode: bool = False, finish_reason: str | None = None) -> list[str]:
    """One label per cluster from an answer of one line per row.

    A line may start with the cluster's name and a colon (``"3: B cell"``); such lines are
    matched by name, the others in order. A cluster without a line is "Unknown".
    """
    parsed = parse_response(text, reasoning, finish_reason=finish_reason,
                            reasoning_mode=reasoning_mode)
    if not parsed.complete:
        return [UNPARSED_LABEL] * len(clusters)
    lines = [ln for ln in (parsed.answer or "").splitlines() if ln.strip()]
    by_name: dict[str, str] = {}
    free: list[str] = []
    lower = {c.strip().lower(): c for c in clusters}
    for ln in lines:
        ln = _LEAD.sub("", ln).strip()
        name, sep, rest = ln.partition(":")
        key = name.strip().strip("*").strip().lower()
        if sep and key in lower and lower[key] not in by_name:
            by_name[lower[key]] = rest.strip()
        else:
            free.append(ln)
    out = []
    it = iter(free)
    for c in clusters:
        raw = by_name.get(c)
        if raw is None:
            raw = next(it, "")
        label = parse_response(raw).label if raw else ""
        out.append(label or UNPARSED_LABEL)
    return out


def vote_rows(generations, clusters: Sequence[str], reasoning: bool
              ) -> list[tuple[str, float, str]]:
    """Per cluster of one row prompt: (label, agreement of the samples or NaN, response)."""
    import math

    from ..backends.base import is_failed

    if is_failed(generations):
        return [(UNPARSED_LABEL, math.nan, "")] * len(clusters)
    per_sample = [split_rows(g.text, g.reasoning, clusters, reasoning_mode=reasoning,
                             finish_reason=(g.meta or {}).get("finish_reason"))
                  for g in generations]
    out = []
    for j in range(len(clusters)):
        labels = [s[j] for s in per_sample]
        label, agree, k = majority_label(labels)
        conf = agree if len(labels) > 1 else math.nan
        out.append((label or UNPARSED_LABEL, conf, generations[k].text or ""))
    return out


__all__ = ["GPTCELLTYPE_TOP", "MARKER_PROMPT_STYLES", "build_prompts", "gptcelltype_instruction",
           "rows_instruction", "split_rows", "vote_rows"]
