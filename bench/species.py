"""Mouse data: does the built-in reasoner give the same labels on mouse symbols?

Usage::

    python bench/species.py [--shared ../shared] [--orthologs PATH]

Human datasets converted to mouse symbols through the one-to-one orthologs of the Ensembl 105
table (genes without one are dropped, as a mouse dataset would not have them), annotated with
the built-in default (``species="auto"``) and compared with the human originals: label
agreement with the human run on all genes and on the same (ortholog-covered) genes, agreement
of the lineage root, and the mean hierarchical score against the ground truth of both runs
(``tumour_immune_1000`` read with its truth map). Then the mouse-only markers the knowledge base
adds (``cellreasoner/data/markers_mouse.tsv``) checked against an independent source, the
35,197 mouse rows of CellMarker 2.0 in ``../shared/data/markers/`` (bench only, never shipped):
the cell types CellMarker lists most often for each gene.

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


def _run(adata, species: str):
    t0 = time.perf_counter()
    res = cr.annotate(adata, species=species, progress=False, cache=False)
    return res, time.perf_counter() - t0


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
    rows = cellmarker_rows(shared)
    if rows:
        print("\nmouse-only markers vs CellMarker 2.0 mouse rows (negative weight: a negative "
              "marker)\n")
        print(table(rows, ["type", "marker", "CellMarker mouse rows", "most listed for"]))


if __name__ == "__main__":
    main()
