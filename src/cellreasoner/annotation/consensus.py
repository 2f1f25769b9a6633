"""Consensus of several backends: each labels the data as a single-backend run would (with its
own cache entries), then :func:`~cellreasoner.annotation.vote.consensus_frame` votes.

``annotate(adata, backend=["builtin", "openai:MODEL", BackendObject])`` or the CLI's
``--backend builtin,openai:MODEL,gguf:PATH`` come here. With ``deliberate=True`` the language
model backends get one more prompt for every item the backends disagree on: their first
prompt, the other backends' answers with the markers each cited as present (their evidence
check), and the request to give a final answer (:mod:`.deliberation`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends import Backend, backend_class, get_backend
from ..errors import InputError
from .deliberation import DELIBERATION_NOTE, deliberate_cells
from .result import AnnotationResult, uns_safe
from .vote import consensus_frame


@dataclass
class Member:
    """One backend of a consensus: its column name, the backend, and whether we made it."""

    name: str
    backend: Backend
    own: bool
    result: AnnotationResult | None = field(default=None, repr=False)


def is_consensus(backend) -> bool:
    """Whether ``backend`` names several backends (a list, or a comma-separated string)."""
    if isinstance(backend, str):
        return "," in backend
    return isinstance(backend, list | tuple) and len(backend) > 1


def parse_backend_spec(spec: str | Backend | Sequence) -> list[tuple[str, str | None] | Backend]:
    """The backends a ``backend`` argument names, in order.

    Parameters
    ----------
    spec
        ``"builtin,openai:MODEL,gguf:PATH"`` (each item ``NAME`` or ``NAME:MODEL``; the model
        is everything after the first colon), a list of such strings and/or ready
        :class:`~cellreasoner.backends.Backend` objects, or one of them.

    Returns
    -------
    list
        ``(registry name, model or None)`` pairs and backend objects. Unknown names raise
        :class:`~cellreasoner.errors.InputError`.
    """
    items = spec.split(",") if isinstance(spec, str) else (
        [spec] if isinstance(spec, Backend) else list(spec))
    out: list[tuple[str, str | None] | Backend] = []
    for item in items:
        if isinstance(item, Backend):
            out.append(item)
            continue
        if not isinstance(item, str) or not item.strip():
            raise InputError(f"backend list {spec!r}: each entry must be a backend name "
                             "(builtin, openai:MODEL, gguf:PATH, ...) or a Backend object, not "
                             f"{item!r}.")
        name, _, model = item.strip().partition(":")
        backend_class(name.strip())  # unknown names: one clear error
        out.append((name.strip(), model.strip() or None))
    if not out:
        raise InputError("backend: name at least one backend.")
    return out


def single_backend(spec, model: str | None) -> tuple[str | Backend, str | None]:
    """``(backend, model)`` of a ``backend`` argument naming one backend: ``"name"``,
    ``"name:model"``, a one-item list, or a ready :class:`~cellreasoner.backends.Backend`.

    Raises
    ------
    InputError
        The spec and ``model`` name two different models.
    """
    if isinstance(spec, Backend):
        return spec, model
    (single,) = parse_backend_spec(spec)
    if isinstance(single, Backend):
        return single, model
    name, spec_model = single
    if spec_model is not None and model is not None and model != spec_model:
        raise InputError(f"backend '{name}:{spec_model}' and model '{model}' name two models; "
                         "give one.")
    return name, spec_model if spec_model is not None else model


def member_name(item: tuple[str, str | None] | Backend) -> str:
    """The column suffix of one backend: ``builtin``, ``openai_gpt_4o``, ``gguf_qwen2_5_1_5b``
    (a model file's stem), lower case, non-alphanumerics as ``_``."""
    if isinstance(item, Backend):
        name, model = item.name, (None if item.name == "builtin" else item.model)
    else:
        name, model = item
    if model and model != name:
        looks_like_path = "/" in model or os.sep in model or Path(model).suffix == ".gguf"
        model = Path(model).stem if looks_like_path else model
        name = f"{name}_{model}"
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "backend"


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def _accepted(cls: type[Backend]) -> set[str]:
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def make_members(spec, model: str | None, backend_options: dict | None) -> list[Member]:
    """Instantiate every backend of ``spec``; each named one takes the ``backend_options``
    its constructor accepts (``base_url`` goes to ``openai``, ``n_threads`` to ``gguf``, ...)."""
    if model is not None:
        raise InputError("model/--model does not apply to several backends: give each its "
                         "model in the list, e.g. 'builtin,openai:MODEL,gguf:PATH'.")
    items = parse_backend_spec(spec)
    options = dict(backend_options or {})
    names = _unique([member_name(i) for i in items])
    named = [i for i in items if not isinstance(i, Backend)]
    unused = set(options) - set().union(*(_accepted(backend_class(n)) for n, _ in named))
    if options and unused:
        raise InputError(f"No backend of {spec!r} accepts the option(s) "
                         f"{', '.join(sorted(unused))}.")
    members: list[Member] = []
    try:
        for name, item in zip(names, items, strict=True):
            if isinstance(item, Backend):
                members.append(Member(name, item, False))
                continue
            cls_name, model_name = item
            accepted = _accepted(backend_class(cls_name))
            opts = {k: v for k, v in options.items() if k in accepted}
            if model_name is not None:
                opts["model"] = model_name
            members.append(Member(name, get_backend(cls_name, **opts), True))
    except BaseException:
        for m in members:
            if m.own:
                m.backend.close()
        raise
    return members


def annotate_consensus(adata, backend, *, model: str | None = None,
                       backend_options: dict | None = None, deliberate: bool = False,
                       key_added: str = "cellreasoner", copy: bool = False,
                       **options) -> AnnotationResult:
    """Annotate with every backend of ``backend`` and vote (see
    :func:`cellreasoner.annotation.annotate`, which calls this for a list of backends).

    Parameters
    ----------
    adata
        AnnData or a path (opened once, shared by the backends' runs).
    backend
        Several backends (see :func:`parse_backend_spec`).
    model
        Must be ``None``: each backend's model is named in its entry.
    backend_options
        Constructor options, each given to the backends that accept it.
    deliberate
        One deliberation round for the language-model backends (default False).
    key_added
        Prefix of the ``obs`` columns and the ``uns`` key.
    copy
        Annotate a copy of an in-memory AnnData.
    **options
        :func:`~cellreasoner.annotation.annotate`'s other keyword arguments, passed to each
        backend's run unchanged.

    Returns
    -------
    AnnotationResult
        The consensus table (with ``agreement``, ``entropy`` and ``label_<name>``), written
        into the AnnData.
    """
    from ..checks import check_key_added, in_memory_copy
    from ..io import open_input
    from . import annotate

    t0 = time.perf_counter()
    check_key_added(key_added)
    given = isinstance(adata, str | os.PathLike)
    adata, _, input_name, _ = open_input(adata, layer=options.get("layer"),
                                         use_raw=options.get("use_raw", False),
                                         assay=options.get("assay"))
    if copy and not given:
        adata = in_memory_copy(adata)
    members = make_members(backend, model, backend_options)
    with ExitStack() as stack:
        for m in members:
            if m.own:
                stack.callback(m.backend.close)
        for j, m in enumerate(members):
            scratch = f"_consensus{j}"
            m.result = annotate(adata, m.backend, key_added=scratch, **options)
            _drop_scratch(adata, scratch)
        revised = deliberate_cells(members, adata, options) if deliberate else {}
    table, votes = _consensus_table(members, options.get("mode", "cell"), adata)
    provenance = _provenance(members, votes, table, adata, options, key_added=key_added,
                             deliberate=deliberate, revised=revised,
                             seconds=time.perf_counter() - t0,
                             input_name=input_name if given else "")
    first = members[0].result
    result = AnnotationResult(table=table, provenance=provenance, adata=adata,
                              key_added=key_added, truth=first.truth, clusters=None)
    result.to_adata()
    return result


def _drop_scratch(adata, scratch: str) -> None:
    """Remove a member run's ``obs`` columns and ``uns`` entry (its table is kept)."""
    cols = [c for c in adata.obs.columns if str(c).startswith(f"{scratch}_")]
    adata.obs.drop(columns=cols, inplace=True)
    adata.uns.pop(scratch, None)


def _consensus_table(members: list[Member], mode: str, adata) -> tuple[pd.DataFrame,
                                                                       pd.DataFrame]:
    """The per-cell consensus table (the :data:`FIELDS`, agreement, entropy, one label column
    per backend) and the votes."""
    tables = [m.result.table for m in members]
    index = tables[0].index
    labels = pd.DataFrame({m.name: t["label"].to_numpy() for m, t in zip(members, tables,
                                                                         strict=True)},
                          index=index)
    ids = pd.DataFrame({m.name: t["ontology_id"].to_numpy() for m, t in zip(members, tables,
                                                                           strict=True)},
                       index=index)
    votes = consensus_frame(labels, ids)
    source = _source_member(votes, ids, labels)
    n = len(index)
    rows = np.arange(n)
    cols: dict[str, np.ndarray] = {}
    for f in ("response", "evidence_fraction", "evidence_flag", "cited_present",
              "cited_absent"):
        stack = np.column_stack([t[f].to_numpy(dtype=object) for t in tables])
        picked = stack[rows, np.maximum(source, 0)]
        if f == "evidence_fraction":
            picked = np.where(source >= 0, picked, np.nan)
        elif f == "evidence_flag":
            picked = np.where(source >= 0, picked, False)
        elif f != "response":
            picked = np.where(source >= 0, picked, "")
        cols[f] = picked
    reasoning = np.column_stack([t["reasoning"].to_numpy(dtype=object) for t in tables])
    table = pd.DataFrame({
        "label": votes["label"].to_numpy(),
        "confidence": votes["agreement"].to_numpy(),
        "ontology_id": votes["ontology_id"].to_numpy(),
        "ontology_label": votes["ontology_label"].to_numpy(),
        "reasoning": _reasoning(members, labels, votes, reasoning, source),
        "response": cols["response"],
        "evidence_fraction": cols["evidence_fraction"].astype(np.float64),
        "evidence_flag": cols["evidence_flag"].astype(bool),
        "cited_present": cols["cited_present"],
        "cited_absent": cols["cited_absent"],
    }, index=index)
    table["samples"] = [json.dumps(list(r)) for r in labels.to_numpy().tolist()]
    table["prompt_key"] = ""
    table["agreement"] = votes["agreement"].to_numpy()
    table["entropy"] = votes["entropy"].to_numpy()
    for m in members:
        table[f"label_{m.name}"] = labels[m.name].to_numpy()
    if mode == "cluster":
        table["cluster_label"] = table["label"].to_numpy()
        table["cluster_agreement"] = table["agreement"].to_numpy()
    elif mode == "hybrid":
        from .clusters import majority_by_group

        by = members[0].result.provenance["by"]
        table["cluster_label"], table["cluster_agreement"] = majority_by_group(
            table["label"].tolist(), adata.obs[by].astype(str))
    return table, votes


def _source_member(votes: pd.DataFrame, ids: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Per item, the first backend whose answer lies in the consensus term's subtree (its
    evidence and response are the consensus's), or -1."""
    from ..ontology import get_ontology

    onto = get_ontology()
    n, m = ids.shape
    out = np.full(n, -1, dtype=np.int64)
    cons = votes["ontology_id"].to_numpy()
    cons_label = votes["label"].to_numpy()
    id_arr = ids.astype(object).where(ids.notna(), "").to_numpy()
    lab_arr = labels.to_numpy()
    memo: dict[tuple[str, str], bool] = {}  # (consensus, answer) pairs repeat a lot

    def holds(c: str, i: str) -> bool:
        if (c, i) not in memo:
            memo[c, i] = bool(c) and bool(i) and (i == c or onto.is_ancestor(c, i))
        return memo[c, i]

    for j in range(m - 1, -1, -1):
        mine = id_arr[:, j]
        inside = np.array([holds(c, i) for i, c in zip(mine, cons, strict=True)], dtype=bool)
        same_text = (cons == "") & (lab_arr[:, j] == cons_label) & (cons_label != "Unknown")
        out[inside | same_text] = j
    return out


def _reasoning(members: list[Member], labels: pd.DataFrame, votes: pd.DataFrame,
               reasoning: np.ndarray, source: np.ndarray) -> np.ndarray:
    """One line on the vote, then the reasoning of the backend the evidence comes from."""
    names = [m.name for m in members]
    lab = labels.to_numpy()
    how = votes["how"].to_numpy()
    agree = votes["agreement"].to_numpy()
    out = np.empty(len(lab), dtype=object)
    for i in range(len(lab)):
        answers = "; ".join(f"{n}: {a or 'Unknown'}" for n, a in zip(names, lab[i], strict=True))
        head = (f"Consensus of {len(names)} backends ({how[i]}, agreement "
                f"{agree[i]:.2f}): {answers}.")
        j = source[i]
        own = str(reasoning[i, j]).strip() if j >= 0 else ""
        out[i] = f"{head}\n{names[j]}: {own}" if own else head
    return out


def _provenance(members: list[Member], votes: pd.DataFrame, table: pd.DataFrame, adata,
                options: dict, *, key_added: str, deliberate: bool, revised: dict,
                seconds: float, input_name: str) -> dict:
    from .. import __version__

    provs = [m.result.provenance for m in members]
    first = provs[0]
    summed = {k: int(sum(p.get(k, 0) for p in provs))
              for k in ("unique_prompts", "model_calls", "generations", "cache_hits")}
    provenance = {
        "backend": "consensus",
        "model": " + ".join(m.name for m in members),
        "mode": first["mode"],
        # a dict (h5ad stores no list of dicts); the names keep the order
        "backend_names": [m.name for m in members],
        "backends": {m.name: uns_safe({k: v for k, v in p.items()
                                       if k not in ("clusters", "instruction")})
                     for m, p in zip(members, provs, strict=True)},
        "consensus": {
            "rule": "ontology vote: majority on the CL term, else the closest common CL "
                    "ancestor holding a majority, else plurality",
            "how": {str(k): int(v) for k, v in votes["how"].value_counts().items()},
            "mean_agreement": float(np.mean(votes["agreement"])) if len(votes) else 0.0,
            "deliberate": bool(deliberate),
            "revised": {k: int(v) for k, v in revised.items()},
        },
        "n_cells": int(adata.n_obs),
        **summed,
        "seconds": round(seconds, 3),
        "version": __version__,
        "key_added": key_added,
        "layer": first.get("layer", "X"),
    }
    for k in ("reasoning", "gene_list", "max_genes", "cache", "tissue", "by", "assay"):
        if k in first:
            provenance[k] = first[k]
    if input_name:
        provenance["input"] = input_name
    for k in ("failed_prompts", "failed_cells", "unparsed_cells", "incomplete_cells"):
        total = sum(p.get(k, 0) for p in provs)
        if total:
            provenance[k] = int(total)
    return provenance


__all__ = ["DELIBERATION_NOTE", "Member", "annotate_consensus", "is_consensus",
           "make_members", "member_name", "parse_backend_spec", "single_backend"]
