"""One backend's run of :func:`~cellreasoner.markers.annotate_markers`: the table, filtered
once, and the knowledge base, loaded once (:class:`_Shared`), then the backend's answers,
the built-in evidence and the label check."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends import Backend, backend_class
from ..backends.builtin.reasoner import UNKNOWN, Reasoner
from ..errors import InputError
from .result import BUILTIN_TOP, MarkerAnnotation
from .table import MarkerTable, filter_markers, keep_top, read_marker_table

#: annotate_markers' options that every backend of a consensus run gets as they are.
_OPTIONS = ("tissue", "species", "markers", "top", "max_padj", "min_logfc", "check_labels",
            "label_map", "prompt_style", "clusters_per_call", "reasoning", "instruction", "n",
            "temperature", "top_p", "repetition_penalty", "max_new_tokens", "seed", "cache",
            "batch_size")


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
    _scores: dict = field(default_factory=dict)

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

    def scores(self, reasoner: Reasoner, top: int, options: dict, species: str):
        """The table's :func:`score_table` evidence for its first ``top`` markers (scored
        once per reasoner and ``top``: every consensus member reads the same)."""
        from .scoring import score_table

        key = (id(reasoner), int(top), species)
        if key not in self._scores:
            self._scores[key] = score_table(reasoner, self.markers(top, options),
                                            species=species)
        return self._scores[key]

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
    from .scoring import builtin_frame, check_species

    o = options
    t0 = time.perf_counter()
    species = check_species(o["species"])
    _check_options(o)
    raw = shared.raw
    caps = (backend if isinstance(backend, Backend) else backend_class(backend)).capabilities
    is_model = caps.reads == "prompts"
    if not is_model and (backend_options or model):
        raise InputError("model/backend_options apply to model backends; the built-in reasoner "
                         "takes markers= and tissue=.")
    reasoner = shared.reasoner(backend, species, o)
    with ExitStack() as stack:
        if not is_model:
            top = BUILTIN_TOP if o["top"] is None else o["top"]
            ts = shared.scores(reasoner, top, o, species)
            rows = builtin_frame(reasoner, ts)
            name, model_name, style = "builtin", reasoner.model, "builtin"
            unique, cache_path = 0, None
        else:
            be, style, top = _model_backend(stack, backend, model, backend_options, o)
            # the built-in evidence: the supporting markers and the label check of the answers
            ts = shared.scores(reasoner, max(int(top), BUILTIN_TOP), o, species)
            rows, unique, cache_path = _ask_model(stack, be, shared.markers(top, o), style, o)
            rows["supporting_markers"] = _llm_support(reasoner, ts, list(rows["ontology_id"]))
            name, model_name = be.name, str(be.model)
    out = _output_table(rows, name)
    if o["check_labels"]:
        _add_label_check(out, reasoner, ts, o["label_map"])
    provenance = {
        "input": raw.source, "layout": raw.layout, "clusters": len(raw),
        "backend": name, "model": model_name, "knowledge": reasoner.model,
        "tissue": o["tissue"] or "", "species": species, "top": int(top),
        "max_padj": o["max_padj"], "min_logfc": o["min_logfc"], "prompt_style": style,
        "clusters_per_call": int(o["clusters_per_call"]), "unique_prompts": unique,
        "cache": str(cache_path) if cache_path else "",
        "seconds": round(time.perf_counter() - t0, 3),
        "unknown": int((out["cellreasoner_label"] == UNKNOWN).sum()),
        "mean_confidence": (float(np.nanmean(out["cellreasoner_confidence"]))
                            if out["cellreasoner_confidence"].notna().any() else math.nan),
    }
    return MarkerAnnotation(out, name, model_name, provenance)


def _check_options(o: dict) -> None:
    """One clear error for a prompt style or sample count out of range."""
    from .prompting import MARKER_PROMPT_STYLES

    if o["prompt_style"] not in MARKER_PROMPT_STYLES:
        raise InputError(f"prompt_style must be one of {', '.join(MARKER_PROMPT_STYLES)}, "
                         f"not {o['prompt_style']!r}.")
    if int(o["n"]) < 1:
        raise InputError(f"n (samples per prompt) must be at least 1, not {o['n']}.")


def _model_backend(stack: ExitStack, backend, model: str | None,
                   backend_options: dict | None, o: dict) -> tuple[Backend, str, int]:
    """(the model backend, closed with ``stack`` when made here; its prompt style; the
    markers per cluster it reads)."""
    from ..annotation._inputs import _backend as make_backend
    from ..annotation.clusters import default_n_markers
    from ..prompts import resolve_prompt_style
    from .prompting import GPTCELLTYPE_TOP

    be, own = make_backend(backend, model, backend_options)
    if own:
        stack.callback(be.close)
    style = (o["prompt_style"] if o["prompt_style"] == "gptcelltype"
             else resolve_prompt_style(o["prompt_style"], be.model))
    top = o["top"]
    if top is None:
        top = GPTCELLTYPE_TOP if style == "gptcelltype" else default_n_markers(style)
    return be, style, top


def _ask_model(stack: ExitStack, be: Backend, markers: MarkerTable, style: str,
               o: dict) -> tuple[pd.DataFrame, int, object]:
    """The model's answer for every cluster of ``markers``: (rows, unique prompts, the
    cache path or ``None``)."""
    from ..annotation.cache import open_cache, resolve_cache_path
    from ..backends.base import RunContext
    from ..prompts import SamplingParams, resolve_instruction
    from .prompting import gptcelltype_instruction, rows_instruction

    tissue, reasoning = o["tissue"], o["reasoning"]
    sampling = SamplingParams.for_mode(reasoning, temperature=o["temperature"],
                                       top_p=o["top_p"],
                                       repetition_penalty=o["repetition_penalty"],
                                       max_new_tokens=o["max_new_tokens"], seed=o["seed"],
                                       n=int(o["n"]))
    if style == "gptcelltype":
        text = gptcelltype_instruction(tissue)
    elif int(o["clusters_per_call"]) > 1 and o["instruction"] is None:
        text = rows_instruction(reasoning, tissue)
    else:
        text = resolve_instruction(o["instruction"], reasoning=reasoning, style=style,
                                   tissue=tissue, cluster=True)
    cache_path = resolve_cache_path(o["cache"])
    run_cache = open_cache(stack, cache_path, be, sampling)
    be.configure(RunContext((), 1000, tissue, bool(reasoning)))
    rows, unique = _model_rows(be, markers.lists(), style=style, instruction=text,
                               reasoning=bool(reasoning),
                               clusters_per_call=int(o["clusters_per_call"]),
                               sampling=sampling, cache=run_cache,
                               batch_size=int(o["batch_size"]))
    return rows, unique, cache_path


def _output_table(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    """The :data:`~.result.OUTPUT_COLUMNS` of one backend's answers."""
    return pd.DataFrame({
        "cluster": rows["cluster"].astype(str),
        "cellreasoner_label": rows["label"].astype(str),
        "cellreasoner_ontology_id": rows["ontology_id"].astype(str),
        "cellreasoner_ontology_label": rows["ontology_label"].astype(str),
        "cellreasoner_confidence": rows["confidence"].astype(float),
        "cellreasoner_reasoning": rows["reasoning"].astype(str),
        "cellreasoner_supporting_markers": rows["supporting_markers"].astype(str),
        "cellreasoner_backend": name,
    })


def _add_label_check(out: pd.DataFrame, reasoner: Reasoner, ts, label_map) -> None:
    """Add ``label_check`` and ``label_check_reason`` (:mod:`.check`) to ``out``."""
    from .check import check_labels as run_check

    lm = None
    if label_map is not None:
        from ..evaluation.truth import read_truth_map

        lm = read_truth_map(label_map)
    checked = run_check(reasoner, ts, lm)
    out["label_check"] = checked["label_check"].to_numpy()
    out["label_check_reason"] = checked["label_check_reason"].to_numpy()


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

