"""``annotate_markers``: name every cluster of a marker table, with reasons, on any backend.

The result is one table per backend with the same columns (:data:`OUTPUT_COLUMNS`), so
answers of several backends can be set side by side or voted on.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends import Backend, backend_class
from ..backends.builtin.reasoner import UNKNOWN, Reasoner
from ..errors import InputError
from .table import (
    DEFAULT_MAX_PADJ,
    DEFAULT_MIN_LOGFC,
    MarkerTable,
    filter_markers,
    keep_top,
    read_marker_table,
)

#: The per-cluster output columns, in order.
OUTPUT_COLUMNS = ("cluster", "cellreasoner_label", "cellreasoner_ontology_id",
                  "cellreasoner_ontology_label", "cellreasoner_confidence",
                  "cellreasoner_reasoning", "cellreasoner_supporting_markers",
                  "cellreasoner_backend")
#: Added by ``check_labels=True``.
CHECK_COLUMNS = ("label_check", "label_check_reason")
#: Markers per cluster the built-in reasoner reads by default.
BUILTIN_TOP = 50


@dataclass
class MarkerAnnotation:
    """The answers for one marker table from one backend.

    Attributes
    ----------
    table
        One row per cluster: :data:`OUTPUT_COLUMNS` (plus :data:`CHECK_COLUMNS` when the
        labels were checked).
    backend
        The backend's name (``"builtin"``, ``"openai"``, ...).
    model
        The backend's model (the knowledge-base version for the built-in reasoner).
    provenance
        How the run was made: input, layout, filters, prompt style, cache, seconds.
    """

    table: pd.DataFrame
    backend: str
    model: str
    provenance: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MarkerAnnotation({len(self.table)} clusters, backend={self.backend!r}, "
                f"model={self.model!r})")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write :attr:`table` as CSV (atomically, spreadsheet formulas escaped)."""
        from ..annotation.output import write_csv

        return write_csv(self.table, path)


def _model_rows(be: Backend, lists: dict[str, list[str]], *, style: str, instruction: str,
                reasoning: bool, clusters_per_call: int, sampling, cache, batch_size: int
                ) -> tuple[pd.DataFrame, int]:
    """Ask the model about every cluster; (rows, unique prompts)."""
    from ..annotation.engine import Stats, generate_cached, vote
    from ..ontology import ground_labels
    from .prompting import build_prompts, vote_rows

    prompts = build_prompts(lists, style=style, instruction=instruction, reasoning=reasoning,
                            clusters_per_call=clusters_per_call)
    uniq = list({p.key(): p for p, _ in prompts}.values())
    gens = generate_cached(be, uniq, sampling, cache, batch_size=batch_size, stats=Stats())
    by_key = {p.key(): g for p, g in zip(uniq, gens, strict=True)}
    answers: dict[str, tuple[str, float, str, str]] = {}
    for p, group in prompts:
        g = by_key[p.key()]
        if len(group) == 1 and style != "gptcelltype" and clusters_per_call == 1:
            a = vote(g, reasoning)
            answers[group[0]] = (a.label or UNKNOWN, a.confidence, a.reasoning or a.response,
                                 a.response)
        else:
            for c, (label, conf, resp) in zip(group, vote_rows(g, group, reasoning),
                                              strict=True):
                answers[c] = (label, conf, resp, resp)
    names = list(lists)
    labels = [answers[c][0] for c in names]
    ids, onto_labels = ground_labels([lb if lb != UNKNOWN else "" for lb in labels])
    frame = pd.DataFrame({
        "cluster": names, "label": labels, "ontology_id": ids, "ontology_label": onto_labels,
        "confidence": [answers[c][1] for c in names],
        "reasoning": [answers[c][2] for c in names],
    })
    return frame, len(uniq)


def _llm_support(reasoner: Reasoner, ts, ids: Sequence[str]) -> list[str]:
    """The knowledge-base markers of each answer's CL term that its cluster lists."""
    from .check import _kb_type
    from .scoring import supporting

    out = []
    for i, cid in enumerate(ids):
        t = _kb_type(reasoner, cid, ts.scores[i]) if cid else -1
        out.append(", ".join(ts.spelled[m] for m in supporting(reasoner, ts, i, t))
                   if t >= 0 else "")
    return out


def annotate_markers(
    table: str | os.PathLike | Mapping[str, Sequence[str]] | pd.DataFrame | MarkerTable,
    backend: str | Backend = "builtin",
    *,
    model: str | None = None,
    tissue: str | None = None,
    species: str = "human",
    markers: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    top: int | None = None,
    max_padj: float | None = DEFAULT_MAX_PADJ,
    min_logfc: float | None = DEFAULT_MIN_LOGFC,
    check_labels: bool = False,
    label_map: str | os.PathLike | Mapping[str, str] | None = None,
    prompt_style: str = "auto",
    clusters_per_call: int = 1,
    reasoning: bool = False,
    instruction: str | os.PathLike | None = None,
    n: int = 1,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    cache: str | os.PathLike | bool | None = None,
    batch_size: int = 16,
    backend_options: dict | None = None,
    layout: str = "auto",
    uns_key: str | None = None,
    deliberate: bool = False,
) -> MarkerAnnotation:
    """Name every cluster of a marker table, with reasons and a CL term.

    Parameters
    ----------
    table
        A marker table file (Seurat ``FindAllMarkers`` CSV, ``sc.get.rank_genes_groups_df``
        CSV, ``.h5ad`` with a ``rank_genes_groups`` result, ``cluster<TAB>genes`` lines, JSON
        ``{cluster: [genes]}``), a dict, a DataFrame or a :class:`~.table.MarkerTable`.
    backend
        ``"builtin"`` (default: the knowledge-base reasoner, no download), any registry name
        (``"openai"``, ``"gguf"``, ``"transformers"``, ``"vllm"``), ``"NAME:MODEL"``, or a ready
        backend. Several (``"builtin,openai:MODEL_A,gguf:PATH"``, or a list) make a consensus:
        each backend names the clusters as it would alone, then the ontology-aware vote of
        ``annotate`` decides (``cellreasoner_agreement``, also the confidence;
        ``cellreasoner_entropy``; each backend's own answer in ``cellreasoner_label_<name>``).
    model
        Model name/path for a model backend.
    tissue
        Tissue of the cells (default none): restricts the built-in knowledge; named in model
        prompts.
    species
        ``"human"`` (default) or ``"mouse"``: which rows of external marker databases count,
        and how table symbols meet the knowledge base.
    markers
        Extra marker knowledge: a file in the built-in format, a CellMarker 2.0 table or a
        PanglaoDB TSV/xlsx (several allowed), merged into the built-in knowledge base.
    top
        Markers per cluster after filtering (default: 50 for the built-in reasoner, 10 for the
        GPTCelltype prompt, 100/30 for the CellReasoner/neutral prompts as in ``annotate``).
    max_padj, min_logfc
        Filters where the table has those columns (default 0.05 and 0.25; ``None``: off).
    check_labels
        Add ``label_check`` (agrees / disagrees / uncertain) and ``label_check_reason``,
        reading the cluster names as cell-type labels and weighing them against the built-in
        reasoner's evidence, whatever the backend (default ``False``).
    label_map
        How to read cluster names as CL terms for the check (a TSV with ``truth`` and
        ``cl_id`` columns, or a dict); default ``None``: the ontology's reading.
    prompt_style
        Model backends: ``"auto"`` (default), ``"cellreasoner"``, ``"neutral"`` or
        ``"gptcelltype"``.
    clusters_per_call
        Clusters asked in one prompt (default 1); above 1 the prompt lists one row per
        cluster.
    reasoning
        Ask model backends for ``<think>`` reasoning (default ``False``).
    instruction
        Override the system instruction (as in ``annotate``; CellReasoner/neutral styles).
    n
        Samples per prompt (default 1); the majority wins and its share is the confidence.
    temperature, max_new_tokens, seed
        Sampling overrides (default: the upstream settings of the mode).
    cache
        ``None`` (default): the shared annotation cache; a path; or ``False``.
    batch_size
        Prompts per backend call (default 16).
    backend_options
        Extra backend constructor options (``base_url``, ``api_key_env``, ...).
    layout
        Table layout (default ``"auto"``: detected).
    uns_key
        ``.h5ad`` input: the ``uns`` key of the ``rank_genes_groups`` result.
    deliberate
        Consensus runs only: one deliberation round (default False), as in ``annotate``:
        for every cluster the backends disagree on, each model backend sees the cluster's
        markers, the other backends' answers with their supporting markers and its own first
        answer, and may revise it (cached like any prompt).

    Returns
    -------
    MarkerAnnotation
        ``.table`` with one row per cluster and the columns :data:`OUTPUT_COLUMNS` (plus
        ``label_check`` and ``label_check_reason``).
    """
    # this call's options (taken before any other local exists), shared by consensus members
    options = {k: v for k, v in locals().items() if k in _OPTIONS}
    from ..annotation.consensus import is_consensus

    if deliberate and not is_consensus(backend):
        raise InputError("deliberate (--deliberate) needs several backends, e.g. "
                         "backend='builtin,openai:MODEL'.")
    if is_consensus(backend):
        return _consensus(table, backend, model=model, backend_options=backend_options,
                          layout=layout, uns_key=uns_key, deliberate=deliberate,
                          options=options)
    from ..annotation.consensus import single_backend

    backend, model = single_backend(backend, model)  # "name", "name:model", [one]
    return _annotate_one(_Shared(table, layout, uns_key), backend, model, backend_options,
                         options)


#: annotate_markers' options that every backend of a consensus run gets as they are.
_OPTIONS = ("tissue", "species", "markers", "top", "max_padj", "min_logfc", "check_labels",
            "label_map", "prompt_style", "clusters_per_call", "reasoning", "instruction", "n",
            "temperature", "max_new_tokens", "seed", "cache", "batch_size")


@dataclass
class _Shared:
    """What every backend's run on one table reads the same: the table (read once), its
    filtered markers (filtered once: the small-cluster warning is given once) and the
    knowledge base (loaded once)."""

    table: object
    layout: str = "auto"
    uns_key: str | None = None
    _raw: MarkerTable | None = None
    _filtered: MarkerTable | None = None
    _reasoner: Reasoner | None = None

    @property
    def raw(self) -> MarkerTable:
        """The table as read."""
        if self._raw is None:
            self._raw = self.table if isinstance(self.table, MarkerTable) else (
                read_marker_table(self.table, layout=self.layout, key=self.uns_key))
        return self._raw

    def markers(self, top: int, options: dict) -> MarkerTable:
        """The table filtered by ``max_padj``/``min_logfc``, its first ``top`` markers."""
        if self._filtered is None:
            self._filtered = filter_markers(self.raw, max_padj=options["max_padj"],
                                            min_logfc=options["min_logfc"])
        return keep_top(self._filtered, top)

    def reasoner(self, backend, species: str, options: dict) -> Reasoner:
        """The built-in reasoner whose evidence every backend's answer is read with: a
        ready builtin backend's own (no markers/tissue asked), else the knowledge base with
        ``markers`` merged in and restricted to ``tissue``."""
        from ..backends.builtin.backend import BuiltinBackend

        if (isinstance(backend, BuiltinBackend) and options["markers"] is None
                and options["tissue"] is None):
            return backend.reasoner
        if self._reasoner is None:
            from .knowledge import load_knowledge

            self._reasoner = Reasoner(load_knowledge(options["markers"],
                                                     tissue=options["tissue"],
                                                     species=species))
        return self._reasoner


def _annotate_one(shared: _Shared, backend: str | Backend, model: str | None,
                  backend_options: dict | None, options: dict) -> MarkerAnnotation:
    """One backend names every cluster (:func:`annotate_markers` with one backend)."""
    from ..annotation._inputs import _backend as make_backend
    from ..annotation.cache import GenerationCache, resolve_cache_path
    from ..annotation.clusters import default_n_markers
    from ..backends.base import RunContext
    from ..prompts import SamplingParams, resolve_instruction, resolve_prompt_style
    from .prompting import (
        GPTCELLTYPE_TOP,
        MARKER_PROMPT_STYLES,
        gptcelltype_instruction,
        rows_instruction,
    )
    from .scoring import builtin_frame, check_species, score_table

    o = options
    t0 = time.perf_counter()
    species = check_species(o["species"])
    if o["prompt_style"] not in MARKER_PROMPT_STYLES:
        raise InputError(f"prompt_style must be one of {', '.join(MARKER_PROMPT_STYLES)}, "
                         f"not {o['prompt_style']!r}.")
    if int(o["n"]) < 1:
        raise InputError(f"n (samples per prompt) must be at least 1, not {o['n']}.")
    raw = shared.raw
    caps = (backend if isinstance(backend, Backend) else backend_class(backend)).capabilities
    is_model = caps.reads == "prompts"
    if not is_model and (backend_options or model):
        raise InputError("model/backend_options apply to model backends; the built-in reasoner "
                         "takes markers= and tissue=.")
    reasoner = shared.reasoner(backend, species, o)
    tissue, reasoning, top = o["tissue"], o["reasoning"], o["top"]
    with ExitStack() as stack:
        be = None
        style = "builtin"
        if is_model:
            be, own = make_backend(backend, model, backend_options)
            if own:
                stack.callback(be.close)
            style = (o["prompt_style"] if o["prompt_style"] == "gptcelltype"
                     else resolve_prompt_style(o["prompt_style"], be.model))
        if top is None:
            top = (BUILTIN_TOP if not is_model else GPTCELLTYPE_TOP if style == "gptcelltype"
                   else default_n_markers(style))
        filtered = shared.markers(top, o)
        # the built-in evidence: the answer of the builtin backend, the supporting markers and
        # the label check of every backend
        ts = score_table(reasoner, shared.markers(max(int(top), BUILTIN_TOP), o),
                         species=species) if is_model else score_table(
            reasoner, filtered, species=species)
        if not is_model:
            rows = builtin_frame(reasoner, ts)
            name, model_name, unique = "builtin", reasoner.model, 0
            cache_path = None
        else:
            sampling = SamplingParams.for_mode(reasoning, temperature=o["temperature"],
                                               max_new_tokens=o["max_new_tokens"],
                                               seed=o["seed"], n=int(o["n"]))
            if style == "gptcelltype":
                text = gptcelltype_instruction(tissue)
            elif int(o["clusters_per_call"]) > 1 and o["instruction"] is None:
                text = rows_instruction(reasoning, tissue)
            else:
                text = resolve_instruction(o["instruction"], reasoning=reasoning, style=style,
                                           tissue=tissue, cluster=True)
            run_cache = None
            cache_path = resolve_cache_path(o["cache"])
            if cache_path is not None:
                run_cache = GenerationCache(cache_path, be.name, be.model, sampling)
                stack.callback(run_cache.close)
            be.configure(RunContext((), 1000, tissue, bool(reasoning)))
            rows, unique = _model_rows(be, filtered.lists(), style=style, instruction=text,
                                       reasoning=bool(reasoning),
                                       clusters_per_call=int(o["clusters_per_call"]),
                                       sampling=sampling, cache=run_cache,
                                       batch_size=int(o["batch_size"]))
            rows["supporting_markers"] = _llm_support(reasoner, ts, list(rows["ontology_id"]))
            name, model_name = be.name, str(be.model)
    out = pd.DataFrame({
        "cluster": rows["cluster"].astype(str),
        "cellreasoner_label": rows["label"].astype(str),
        "cellreasoner_ontology_id": rows["ontology_id"].astype(str),
        "cellreasoner_ontology_label": rows["ontology_label"].astype(str),
        "cellreasoner_confidence": rows["confidence"].astype(float),
        "cellreasoner_reasoning": rows["reasoning"].astype(str),
        "cellreasoner_supporting_markers": rows["supporting_markers"].astype(str),
        "cellreasoner_backend": name,
    })
    if o["check_labels"]:
        from .check import check_labels as run_check

        lm = None
        if o["label_map"] is not None:
            from ..evaluation.truth import read_truth_map

            lm = read_truth_map(o["label_map"])
        checked = run_check(reasoner, ts, lm)
        out["label_check"] = checked["label_check"].to_numpy()
        out["label_check_reason"] = checked["label_check_reason"].to_numpy()
    provenance = {
        "input": raw.source, "layout": raw.layout, "clusters": len(raw),
        "backend": name, "model": model_name, "knowledge": reasoner.model,
        "tissue": tissue or "", "species": species, "top": int(top),
        "max_padj": o["max_padj"], "min_logfc": o["min_logfc"], "prompt_style": style,
        "clusters_per_call": int(o["clusters_per_call"]), "unique_prompts": unique,
        "cache": str(cache_path) if cache_path else "",
        "seconds": round(time.perf_counter() - t0, 3),
        "unknown": int((out["cellreasoner_label"] == UNKNOWN).sum()),
        "mean_confidence": (float(np.nanmean(out["cellreasoner_confidence"]))
                            if out["cellreasoner_confidence"].notna().any() else math.nan),
    }
    return MarkerAnnotation(out, name, model_name, provenance)


def _consensus(table, backend, *, model: str | None, backend_options: dict | None,
               layout: str, uns_key: str | None, deliberate: bool,
               options: dict) -> MarkerAnnotation:
    """Every backend of ``backend`` names the clusters (each exactly as alone, so with its own
    cache entries), then the ontology-aware vote of :mod:`cellreasoner.annotation.vote`."""
    from ..annotation.consensus import make_members
    from ..annotation.vote import consensus_frame

    t0 = time.perf_counter()
    shared = _Shared(table, layout, uns_key)
    shared.raw  # noqa: B018 - read (and checked) before any backend is made
    members = make_members(backend, model, backend_options)
    revised: dict[str, int] = {}
    try:
        # the label check reads the built-in evidence, the same for every member: made once
        runs = [_annotate_one(shared, m.backend, None, None, {
            **options, "check_labels": bool(options["check_labels"]) and k == 0})
            for k, m in enumerate(members)]
        if deliberate:
            revised = _deliberate(members, runs, shared, options)
    finally:
        for m in members:
            if m.own:
                m.backend.close()
    names = [m.name for m in members]
    per = {n: r.table.set_index("cluster") for n, r in zip(names, runs, strict=True)}
    labels = pd.DataFrame({n: t["cellreasoner_label"] for n, t in per.items()})
    ids = pd.DataFrame({n: t["cellreasoner_ontology_id"] for n, t in per.items()})
    votes = consensus_frame(labels, ids)
    first = next(iter(per.values()))

    def support(cluster: str, cl_id: str) -> str:
        """The supporting markers of the backends whose answer is the consensus term."""
        got = [per[n].at[cluster, "cellreasoner_supporting_markers"] for n in names
               if cl_id and per[n].at[cluster, "cellreasoner_ontology_id"] == cl_id]
        return next((g for g in got if g), "")

    clusters = list(labels.index)
    out = pd.DataFrame({
        "cluster": clusters,
        "cellreasoner_label": votes["label"].astype(str).to_numpy(),
        "cellreasoner_ontology_id": votes["ontology_id"].astype(str).to_numpy(),
        "cellreasoner_ontology_label": votes["ontology_label"].astype(str).to_numpy(),
        "cellreasoner_confidence": votes["agreement"].to_numpy(dtype=float),
        "cellreasoner_reasoning": [
            f"Consensus ({votes.at[c, 'how']}) of {len(names)} backends: " + "; ".join(
                f"{n}: {labels.at[c, n]}" for n in names) for c in clusters],
        "cellreasoner_supporting_markers": [support(c, votes.at[c, "ontology_id"])
                                            for c in clusters],
        "cellreasoner_backend": "consensus:" + ",".join(names),
    })
    for col in CHECK_COLUMNS:  # the check reads the built-in evidence, the same in every run
        if col in first:
            out[col] = first[col].to_numpy()
    out["cellreasoner_agreement"] = votes["agreement"].to_numpy(dtype=float)
    out["cellreasoner_entropy"] = votes["entropy"].to_numpy(dtype=float)
    for n in names:
        out[f"cellreasoner_label_{n}"] = labels[n].to_numpy()
    provenance = {
        "backend": "consensus", "backends": {n: {"backend": r.backend, "model": r.model}
                                             for n, r in zip(names, runs, strict=True)},
        "decided": votes["how"].value_counts().to_dict(),
        "members": {n: r.provenance for n, r in zip(names, runs, strict=True)},
        "deliberation": ({"revised": revised} if deliberate else {}),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return MarkerAnnotation(out, "consensus", ",".join(names), provenance)


def _deliberate(members, runs: list[MarkerAnnotation], shared: _Shared,
                options: dict) -> dict[str, int]:
    """One round on the clusters the backends disagree on (:mod:`cellreasoner.annotation.
    deliberation`): each model backend sees the cluster's markers, the others' answers with
    their supporting markers and its own first answer, and may revise it (in its run's
    table). Returns the revisions per backend."""
    from ..annotation.deliberation import (
        DELIBERATION_NOTE,
        ask_again,
        deliberation_text,
        disputed,
    )
    from ..prompts import resolve_instruction

    tables = [r.table.set_index("cluster") for r in runs]
    labels = pd.DataFrame({m.name: t["cellreasoner_label"] for m, t in zip(members, tables,
                                                                        strict=True)})
    ids = pd.DataFrame({m.name: t["cellreasoner_ontology_id"] for m, t in zip(members, tables,
                                                                           strict=True)})
    clusters = list(labels.index[disputed(labels, ids)])
    revised: dict[str, int] = {}
    if not clusters:
        return revised
    instruction = (resolve_instruction(None, reasoning=bool(options.get("reasoning")),
                                       style="neutral", tissue=options.get("tissue"),
                                       cluster=True) + "\n\n" + DELIBERATION_NOTE)
    for j, (m, run) in enumerate(zip(members, runs, strict=True)):
        if m.backend.capabilities.reads != "prompts":
            continue
        lists = shared.markers(run.provenance["top"], options).lists()
        texts = [deliberation_text(
            ", ".join(lists.get(c, [])),
            [(other.name, labels.at[c, other.name],
              str(tables[k].at[c, "cellreasoner_supporting_markers"] or ""))
             for k, other in enumerate(members) if k != j],
            labels.at[c, m.name], "supporting markers") for c in clusters]
        again = ask_again(m.backend, instruction, texts, options,
                          batch_size=int(options.get("batch_size", 16)))
        table = run.table
        count = 0
        for i, c in enumerate(clusters):
            if not again.usable[i]:
                continue
            row = table.index[table["cluster"] == c][0]
            count += str(table.at[row, "cellreasoner_ontology_id"]) != str(again.ontology_id[i])
            table.loc[row, ["cellreasoner_label", "cellreasoner_ontology_id",
                            "cellreasoner_ontology_label", "cellreasoner_reasoning"]] = [
                again.label[i], again.ontology_id[i], again.ontology_label[i],
                again.reasoning[i] or again.response[i]]
        revised[m.name] = int(count)
    return revised


__all__ = ["CHECK_COLUMNS", "OUTPUT_COLUMNS", "MarkerAnnotation", "annotate_markers"]
