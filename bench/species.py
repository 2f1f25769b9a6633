"""Mouse data: does the built-in reasoner give the same labels on mouse symbols?

Usage::

    python bench/species.py [--shared ../shared] [--orthologs PATH] [--diagnose]

Human datasets converted to mouse symbols through the one-to-one orthologs of the Ensembl 105
table (genes without one are dropped, as a mouse dataset would not have them), annotated with
the built-in default (``species="auto"``) and compared with the human originals: label
agreement with the human run on all genes and on the same (ortholog-covered) genes (below 1
only where the mouse markers of ``markers_mouse.tsv`` that have human orthologs, such as Ccr2
or S1pr5, add evidence the human knowledge base does not use), agreement of the lineage root,
and the mean hierarchical score against the ground truth of both runs (``tumour_immune_1000``
read with its truth map). Then the mouse markers the knowledge base adds
(``cellreasoner/data/markers_mouse.tsv``) checked against an independent source, the
35,197 mouse rows of CellMarker 2.0 in ``../shared/data/markers/`` (bench only, never shipped):
the cell types CellMarker lists most often for each gene.

Also printed: how the knowledge-base markers each dataset measures fare in the conversion
(one-to-one, only through a paralog's ortholog, one-to-many, no ortholog). ``--diagnose`` adds
why labels move: per dataset the moves (human label -> mouse label) with the knowledge-base
markers without a mouse ortholog that those cells express, and per such marker the agreement
of the human run with that one gene removed from the human data (with and without the
self-training refinement, which retrains on the remaining genes).

Orthologs: ``--orthologs``, else ``$CELLREASONER_ORTHOLOGS``, else the installed celltypist's
copy, else the product's pinned download.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, table, use_shared_gene_list

import cellreasoner as cr
from cellreasoner.backends.builtin import BuiltinBackend
from cellreasoner.backends.builtin.markers import load_markers, read_marker_file
from cellreasoner.species import load_orthologs, mouse_marker_path


def _orthologs_path(given: str | None) -> str | None:
    if given or os.environ.get("CELLREASONER_ORTHOLOGS"):
        return given or os.environ["CELLREASONER_ORTHOLOGS"]
    spec = importlib.util.find_spec("celltypist")
    if spec and spec.origin:
        p = Path(spec.origin).parent / "data" / "samples" / "Ensembl105_Human2Mouse_Genes.csv"
        if p.is_file():
            return str(p)
    return None


def _datasets(shared: Path):
    import anndata as ad
    import scanpy as sc

    pbmc = sc.datasets.pbmc68k_reduced()
    yield "pbmc68k_reduced", pbmc.raw.to_adata(), "bulk_labels", None
    demo = shared / "data" / "pbmc_demo.rds"
    if demo.is_file():
        yield "pbmc_demo (35 cells)", cr.read(demo), "seurat_annotations", None
    tum = shared / "data" / "tumour_immune_1000.h5ad"
    if tum.is_file():
        yield ("tumour_immune_1000", ad.read_h5ad(tum), "cell_type_annotations",
               shared / "data" / "tumour_immune_1000.truth_map.tsv")


def _run(adata, species: str, **options):
    t0 = time.perf_counter()
    backend = BuiltinBackend(**options) if options else "builtin"
    res = cr.annotate(adata, backend, species=species, progress=False, cache=False)
    return res, time.perf_counter() - t0


def _kb_genes(db) -> dict[str, list[str]]:
    """Every knowledge-base marker -> the types naming it (``+`` positive, ``-`` negative)."""
    out: dict[str, list[str]] = {}
    for t in db.types:
        for sign, markers in (("+", t.positive), ("-", t.negative)):
            for g in markers:
                out.setdefault(g, []).append(f"{sign}{t.name}")
    return out


def _detected(adata, genes: list[str], cells=None, share: float = 0.01) -> list[str]:
    """The ``genes`` of ``adata`` detected in at least ``share`` of (the chosen) cells."""
    genes = [g for g in genes if g in adata.var_names]
    if not genes:
        return []
    X = adata[:, genes].X if cells is None else adata[cells, genes].X
    frac = np.asarray((X > 0).mean(axis=0)).ravel()
    return [g for g, f in zip(genes, frac, strict=True) if f >= share]


def _score(adata, res, truth: str, truth_map) -> float:
    adata.obs["cellreasoner_label"] = res.table["label"].to_numpy()
    out = cr.tl.score(adata, truth, truth_map=truth_map, copy=True)
    return float(out.obs["cellreasoner_score"].mean())


def _plain(labels) -> np.ndarray:
    """Labels without the species of CL's species-specific terms (ILC2 ', human'/', mouse')."""
    return np.array([str(x).removesuffix(", human").removesuffix(", mouse") for x in labels])


def _same_root(a, b, root) -> float:
    return float(np.mean([root(x) == root(y) for x, y in zip(a, b, strict=True)]))


def agreement_rows(shared: Path, o2o: dict[str, str]) -> list[dict]:
    db = load_markers()

    def root(label: str) -> str:
        return db.lineage(label)[0] if label in db else label.split(",")[0]

    rows = []
    for name, human, truth, truth_map in _datasets(shared):
        keep = np.array([g in o2o for g in human.var_names])
        mouse = human[:, keep].copy()
        mouse.var_names = [o2o[g] for g in mouse.var_names]
        h, th = _run(human.copy(), "human")
        same, _ = _run(human[:, keep].copy(), "human")
        m, tm = _run(mouse, "auto")
        lh, ls, lm = (_plain(r.table["label"]) for r in (h, same, m))
        rows.append({
            "dataset": name, "cells": human.n_obs,
            "genes human/mouse": f"{human.n_vars}/{mouse.n_vars}",
            "detected": m.provenance["species"],
            "agree vs human": f"{(lm == lh).mean():.3f}",
            "agree, same genes": f"{(lm == ls).mean():.3f}",
            "lineage agree": f"{_same_root(lm, lh, root):.3f}",
            "score human": f"{_score(human, h, truth, truth_map):.3f}",
            "score mouse": f"{_score(mouse, m, truth, truth_map):.3f}",
            "s human/mouse": f"{th:.1f}/{tm:.1f}",
        })
    return rows


def coverage_rows(shared: Path) -> list[dict]:
    """How the knowledge-base markers each dataset measures (detected in >= 1% of cells)
    reach mouse: one-to-one (kept by the conversion), only through a paralog's ortholog
    (knowledge base only: XCL2 -> Xcl1 like XCL1), one-to-many in Ensembl (left out both
    ways: no one mouse gene stands for them), none at all."""
    orth = load_orthologs()
    o2o, to_mouse = orth.one_to_one(), orth.to_mouse()
    h2m, _ = orth._partners()
    kb = _kb_genes(load_markers())
    rows = []
    for name, human, _, _ in _datasets(shared):
        genes = _detected(human, list(kb))
        kinds = {"one-to-one": [], "paralog": [], "one-to-many": [], "none": []}
        for g in genes:
            kind = ("one-to-one" if g in o2o else "paralog" if g in to_mouse
                    else "one-to-many" if h2m.get(g) else "none")
            kinds[kind].append(g)
        rows.append({"dataset": name, "KB markers measured": len(genes),
                     **{k: len(v) for k, v in kinds.items()},
                     "left out (one-to-many; none)": "; ".join(
                         ", ".join(v[:12]) for v in (kinds["one-to-many"], kinds["none"]))})
    return rows


def _contested(db, a: str, b: str) -> set[str]:
    """The types competing at each step of the walks to labels ``a`` and ``b``: every
    child of each type on the two paths (and the lineage roots when they differ)."""
    paths = [db.lineage(x) if x in db else [] for x in (a, b)]
    steps = {t for p in paths for t in p}
    if len({p[0] if p else None for p in paths}) > 1:
        steps.add(None)  # the lineage changed: the roots competed
    return {c for t in steps for c in db.children(t)}


def diagnosis_rows(shared: Path, o2o: dict[str, str]) -> tuple[list[dict], list[dict]]:
    """The label moves with the markers without a one-to-one ortholog that decided between
    the competing types, and per such marker the agreement of the human run with only that
    gene removed from the human data."""
    db = load_markers()
    kb = _kb_genes(db)
    moves, genes_rows = [], []
    for name, human, _, _ in _datasets(shared):
        keep = np.array([g in o2o for g in human.var_names])
        mouse = human[:, keep].copy()
        mouse.var_names = [o2o[g] for g in mouse.var_names]
        lh = _plain(_run(human.copy(), "human")[0].table["label"])
        lm = _plain(_run(mouse, "auto")[0].table["label"])
        lost = _detected(human, [g for g in human.var_names[~keep] if g in kb])
        moved = lh != lm
        pairs = pd.Series([f"{a} -> {b}" for a, b in zip(lh[moved], lm[moved], strict=True)])
        for pair, n in pairs.value_counts().head(10).items():
            a, b = pair.split(" -> ")
            contested = _contested(db, a, b)
            cells = np.flatnonzero(moved & (lh == a) & (lm == b))
            used = [f"{g} ({', '.join(u for u in kb[g] if u[1:] in contested)})"
                    for g in _detected(human, lost, cells, share=0.2)
                    if any(u[1:] in contested for u in kb[g])]
            moves.append({"dataset": name, "human label -> mouse label": pair,
                          "cells": int(n), "markers without ortholog they express": "; ".join(
                              used) or "none (the refinement's features and training cells)"})
        plain = {True: lh, False: _plain(_run(human.copy(), "human", refine=False)[0]
                                         .table["label"])}
        for g in lost:
            without = human[:, human.var_names != g].copy()
            row = {"dataset": name, "gene": g, "KB use": ", ".join(kb[g])}
            for refine, ref in plain.items():
                got = _plain(_run(without.copy(), "human", refine=refine)[0].table["label"])
                row["agree" + ("" if refine else ", no refinement")] = float(np.mean(got == ref))
            if min(row["agree"], row["agree, no refinement"]) < 0.995:
                genes_rows.append({k: f"{v:.3f}" if isinstance(v, float) else v
                                   for k, v in row.items()})
    return moves, genes_rows


def cellmarker_rows(shared: Path) -> list[dict]:
    path = shared / "data" / "markers" / "CellMarker2_Cell_marker_All.csv"
    if not path.is_file():
        return []
    cm = pd.read_csv(path, encoding="utf-8-sig", usecols=["species", "cell_name", "Symbol"],
                     dtype=str)
    cm = cm[cm["species"].str.lower() == "mouse"]
    rows = []
    for t in read_marker_file(mouse_marker_path(), require_tree=False):
        for gene, w in {**t.positive, **{g: -v for g, v in t.negative.items()}}.items():
            hits = cm.loc[cm["Symbol"] == gene, "cell_name"].value_counts()
            top = ", ".join(f"{k} ({v})" for k, v in hits.head(3).items())
            rows.append({"type": t.name[:28], "marker": f"{gene}:{w:g}",
                         "CellMarker mouse rows": int(hits.sum()), "most listed for": top[:70]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--orthologs", help="local Ensembl105_Human2Mouse_Genes.csv")
    ap.add_argument("--diagnose", action="store_true",
                    help="also print why labels move (about a minute more)")
    args = ap.parse_args()
    use_shared_gene_list()
    path = _orthologs_path(args.orthologs)
    if path:
        os.environ["CELLREASONER_ORTHOLOGS"] = path
    o2o = load_orthologs().one_to_one()
    shared = Path(args.shared)
    print(f"one-to-one orthologs: {len(o2o):,} (Ensembl 105 + supplement)\n")
    print(table(agreement_rows(shared, o2o),
                ["dataset", "cells", "genes human/mouse", "detected", "agree vs human",
                 "agree, same genes", "lineage agree", "score human", "score mouse",
                 "s human/mouse"]))
    print("\nknowledge-base markers the data measures (>= 1% of cells), by how they reach "
          "mouse\n")
    print(table(coverage_rows(shared),
                ["dataset", "KB markers measured", "one-to-one", "paralog", "one-to-many",
                 "none", "left out (one-to-many; none)"]))
    if args.diagnose:
        moves, genes = diagnosis_rows(shared, o2o)
        print("\nlabels that move (human -> mouse), with the markers without a mouse ortholog "
              "that >= 20% of those cells express\n")
        print(table(moves, ["dataset", "human label -> mouse label", "cells",
                            "markers without ortholog they express"]))
        print("\nthe human run with one such gene removed from the human data: agreement "
              "with the full human run (shown where either is below 0.995)\n")
        print(table(genes, ["dataset", "gene", "KB use", "agree", "agree, no refinement"]))
    rows = cellmarker_rows(shared)
    if rows:
        print("\nmouse markers (markers_mouse.tsv) vs CellMarker 2.0 mouse rows (negative "
              "weight: a negative marker)\n")
        print(table(rows, ["type", "marker", "CellMarker mouse rows", "most listed for"]))


if __name__ == "__main__":
    main()
