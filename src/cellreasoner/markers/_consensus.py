"""A consensus of several backends on one marker table: each names the clusters as it would
alone, the ontology-aware vote of :mod:`cellreasoner.annotation.vote` decides, and an
optional deliberation round (:mod:`cellreasoner.annotation.deliberation`)."""

from __future__ import annotations

import time

import pandas as pd

from ._run import _annotate_one, _Shared
from .result import CHECK_COLUMNS, MarkerAnnotation


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
    labels, ids = _answers(per)
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


def _answers(per: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clusters x backends labels and ontology ids of the backends' tables (by cluster)."""
    return (pd.DataFrame({n: t["cellreasoner_label"] for n, t in per.items()}),
            pd.DataFrame({n: t["cellreasoner_ontology_id"] for n, t in per.items()}))


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
    labels, ids = _answers({m.name: t for m, t in zip(members, tables, strict=True)})
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
        row_of = pd.Series(table.index, index=table["cluster"]).groupby(level=0).first()
        count = 0
        for i, c in enumerate(clusters):
            if not again.usable[i]:
                continue
            row = row_of[c]
            count += str(table.at[row, "cellreasoner_ontology_id"]) != str(again.ontology_id[i])
            table.loc[row, ["cellreasoner_label", "cellreasoner_ontology_id",
                            "cellreasoner_ontology_label", "cellreasoner_reasoning"]] = [
                again.label[i], again.ontology_id[i], again.ontology_label[i],
                again.reasoning[i] or again.response[i]]
        revised[m.name] = int(count)
    return revised

