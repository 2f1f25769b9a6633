"""The deliberation round of a consensus run (``deliberate=True``), one helper for cells and
marker tables.

For every item (cell or cluster) the backends disagree on, each language-model backend sees
its first message (the cell sentence or the cluster's markers), the other backends' answers
with the markers each cited, and its own first answer, and may revise it (mLLMCelltype-style,
one round, cached like any other prompt). :func:`disputed`, :func:`deliberation_text` and
:func:`ask_again` are shared by :func:`cellreasoner.annotate` (:func:`deliberate_cells`) and
:func:`cellreasoner.markers.annotate_markers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .vote import consensus_frame

if TYPE_CHECKING:
    from ..backends import Backend
    from .consensus import Member

#: Appended to a language model's instruction in the deliberation round.
DELIBERATION_NOTE = (
    "Other annotators labelled the same cells. Weigh their answers and the marker genes they "
    "cite against the genes given, then answer with the single cell type you judge correct.")


def disputed(labels: pd.DataFrame, ids: pd.DataFrame) -> np.ndarray:
    """Which items (rows: one column per backend) the backends do not answer unanimously."""
    return consensus_frame(labels, ids)["how"].to_numpy() != "unanimous"


def deliberation_text(message: str, others: Sequence[tuple[str, str, str]], own: str,
                      cited_as: str) -> str:
    """The deliberation message of one item for one backend.

    Parameters
    ----------
    message
        The item's first message (cell sentence, or the cluster's markers).
    others
        ``(backend name, its answer, the markers it cited)`` of every other backend.
    own
        This backend's first answer.
    cited_as
        How the cited markers are introduced (``"markers cited as expressed"``).
    """
    lines = [message, "", "Other annotators answered:"]
    for name, label, cited in others:
        evidence = f" ({cited_as}: {cited})" if cited else ""
        lines.append(f"- {name}: {label or 'Unknown'}{evidence}")
    lines.append(f"Your first answer was: {own or 'Unknown'}.")
    return "\n".join(lines)


@dataclass
class Reconsidered:
    """A backend's second answers, one per text given to :func:`ask_again`."""

    usable: np.ndarray  # bool: a label came back (no failure)
    label: np.ndarray
    reasoning: np.ndarray
    response: np.ndarray
    ontology_id: np.ndarray
    ontology_label: np.ndarray


def ask_again(backend: Backend, instruction: str, texts: Sequence[str], options: dict, *,
              batch_size: int) -> Reconsidered:
    """Ask ``backend`` the deliberation ``texts`` (each distinct text once, through the
    cache ``options["cache"]``), vote its samples and ground the answers in CL.

    ``options`` are the run's keyword arguments (``reasoning``, the sampling overrides,
    ``cache``); the round draws one sample per prompt.
    """
    from ..ontology import ground_labels
    from ..prompts import Prompt, SamplingParams
    from .cache import open_cache, resolve_cache_path
    from .engine import generate_cached, vote

    reasoning = bool(options.get("reasoning", False))
    sampling = SamplingParams.for_mode(
        reasoning, temperature=options.get("temperature"), top_p=options.get("top_p"),
        repetition_penalty=options.get("repetition_penalty"),
        max_new_tokens=options.get("max_new_tokens"), seed=options.get("seed"), n=1)
    codes, uniq = pd.factorize(pd.Series(list(texts), dtype=object))
    prompts = [Prompt(instruction, t, reasoning) for t in uniq]
    with ExitStack() as stack:
        cache = open_cache(stack, resolve_cache_path(options.get("cache")), backend, sampling)
        gens = generate_cached(backend, prompts, sampling, cache, batch_size=int(batch_size))
    answers = [vote(g, reasoning) for g in gens]
    ids, names = ground_labels([a.label or "" for a in answers])

    def per_text(values) -> np.ndarray:
        return np.asarray(values, dtype=object)[codes] if len(codes) else np.empty(0, object)

    return Reconsidered(
        usable=np.array([not a.failure and bool(a.label) for a in answers], dtype=bool)[codes],
        label=per_text([a.label for a in answers]),
        reasoning=per_text([a.reasoning for a in answers]),
        response=per_text([a.response for a in answers]),
        ontology_id=per_text(ids), ontology_label=per_text(names))


def deliberate_cells(members: list[Member], adata, options: dict) -> dict[str, int]:
    """:func:`cellreasoner.annotate`'s round: each language-model backend may revise its
    answer (in its table) for every cell the backends disagree on.

    Returns the number of cells whose answer each backend revised.
    """
    tables = [m.result.table for m in members]
    labels = pd.DataFrame({m.name: t["label"].to_numpy() for m, t in zip(members, tables,
                                                                         strict=True)})
    ids = pd.DataFrame({m.name: t["ontology_id"].to_numpy() for m, t in zip(members, tables,
                                                                           strict=True)})
    cells = np.flatnonzero(disputed(labels, ids))
    revised: dict[str, int] = {}
    if not len(cells):
        return revised
    built: dict[bool, object] = {}  # the cell sentences, built once for every member
    for j, m in enumerate(members):
        if m.backend.capabilities.reads != "prompts":
            continue
        sentences = _first_messages(m, adata, options, cells, built)
        texts = [deliberation_text(
            sentence,
            [(members[k].name, tables[k]["label"].iat[i],
              str(tables[k]["cited_present"].iat[i] or "").strip())
             for k in range(len(members)) if k != j],
            tables[j]["label"].iat[i], "markers cited as expressed")
            for i, sentence in zip(cells, sentences, strict=True)]
        instruction = (f"{m.result.provenance.get('instruction', '')}\n\n"
                       f"{DELIBERATION_NOTE}").strip()
        again = ask_again(m.backend, instruction, texts, options,
                          batch_size=int(options.get("batch_size", 256)))
        rows = cells[again.usable]
        t = m.result.table
        before = t["ontology_id"].to_numpy()[rows].astype(str)
        loc = t.columns.get_loc
        for col in ("label", "ontology_id", "ontology_label", "reasoning", "response"):
            t.iloc[rows, loc(col)] = getattr(again, col)[again.usable]
        revised[m.name] = int((before != again.ontology_id[again.usable].astype(str)).sum())
    return revised


def _first_messages(m: Member, adata, options: dict, cells: np.ndarray,
                    built: dict[bool, object]) -> list[str]:
    """The user message the first prompt of each of ``cells`` carried for backend ``m``
    (cell mode: the cell sentences, built once per expression read and kept in ``built``
    for the other members)."""
    res = m.result
    if res.provenance.get("mode") == "cluster":
        clusters = res.provenance["clusters"]
        by_key = dict(zip(clusters["prompt_key"], clusters["markers"], strict=True))
        keys = res.table["prompt_key"].to_numpy()
        return [by_key.get(k, "") for k in keys[cells]]
    use_raw = res.provenance.get("layer") == "raw"
    if use_raw not in built:
        from ..io import open_input
        from ..sentences import build_sentences
        from ._inputs import _default_gene_list, _gene_vocab

        _, source, _, _ = open_input(adata, layer=options.get("layer"), use_raw=use_raw)
        genes = _gene_vocab(_default_gene_list(options.get("gene_list"), "prompts", source))
        built[use_raw] = build_sentences(source, genes,
                                         max_genes=int(options.get("max_genes", 1000)))
    sentences = built[use_raw]
    return [sentences.sentence(int(i)) for i in cells]


__all__ = ["DELIBERATION_NOTE", "Reconsidered", "ask_again", "deliberate_cells",
           "deliberation_text", "disputed"]
