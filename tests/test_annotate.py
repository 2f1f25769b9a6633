"""The annotation engine end to end with real backends, real data and real files."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellreasoner.annotation import FIELDS, annotate
from cellreasoner.annotation.clusters import rank_markers, read_markers
from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.matrix import from_anndata
from cellreasoner.parsing import normalize_label

sys.path.insert(0, str(Path(__file__).parent))

#: Fast sampling for the random tiny model: a few new tokens, real sampling.
TINY = {"max_new_tokens": 3, "temperature": 1.0, "top_p": 1.0}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, gene_list_path) -> str:
    """A real (random-weight) Qwen2 chat model folder, built once per session."""
    pytest.importorskip("torch")
    from tiny_model import build_tiny_qwen2

    genes = [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()]
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2", genes))


@pytest.fixture
def raw68k(pbmc68k) -> ad.AnnData:
    """pbmc68k_reduced with the log-normalised ``.raw`` as ``X`` (the annotation input)."""
    full = pbmc68k.raw.to_adata()
    full.obsp = pbmc68k.obsp.copy()
    return full


def _obs_columns(key: str = "cellreasoner", clusters: bool = False) -> list[str]:
    fields = list(FIELDS) + (["cluster_label", "cluster_agreement"] if clusters else [])
    return [f"{key}_{f}" for f in fields]


# --- deduplication, cache, self-consistency (transformers backend, tiny Qwen2) ----------------
def test_identical_prompts_generated_once_and_cached(tiny_model, raw68k, tmp_path):
    sub = raw68k[:8].copy()
    dup = ad.concat([sub, sub, sub], index_unique="-")  # 24 cells, 8 distinct sentences
    cache = tmp_path / "gen.sqlite"
    res = annotate(dup, "transformers", model=tiny_model, cache=cache, progress=False, **TINY)
    prov = res.provenance
    assert (prov["n_cells"], prov["unique_prompts"], prov["model_calls"]) == (24, 8, 8)
    assert prov["cache_hits"] == 0
    labels = dup.obs["cellreasoner_label"].to_numpy().reshape(3, 8)
    responses = dup.obs["cellreasoner_response"].to_numpy().reshape(3, 8)
    assert (labels == labels[0]).all() and (responses == responses[0]).all()
    assert set(_obs_columns()) <= set(dup.obs.columns)
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 8
    # a second run asks the model nothing and returns the same answers
    again = annotate(dup, "transformers", model=tiny_model, cache=cache, progress=False,
                     copy=True, **TINY)
    assert again.provenance["model_calls"] == 0
    assert again.provenance["cache_hits"] == 8
    assert (again.table["response"] == res.table["response"]).all()
    # other sampling settings are a different cache entry
    other = annotate(dup, "transformers", model=tiny_model, cache=cache, progress=False,
                     copy=True, seed=7, **TINY)
    assert other.provenance["model_calls"] == 8


def test_self_consistency_majority_and_agreement(tiny_model, raw68k, tmp_path):
    sub = raw68k[:6].copy()
    res = annotate(sub, "transformers", model=tiny_model, n=3, cache=False, progress=False,
                   **TINY)
    assert res.provenance["generations"] == 18
    assert res.provenance["sampling"]["n"] == 3
    for _, row in res.table.iterrows():
        samples = json.loads(row["samples"])
        assert len(samples) == 3
        keys = [normalize_label(s) for s in samples if s]
        best = max(keys.count(k) for k in keys) if keys else 0
        assert row["confidence"] == pytest.approx(best / 3)
        if keys:
            assert keys.count(normalize_label(row["label"])) == best
    # raising n later reuses the cached samples and generates only the new ones
    cache = tmp_path / "sc.sqlite"
    annotate(sub, "transformers", model=tiny_model, n=2, cache=cache, progress=False, copy=True,
             **TINY)
    more = annotate(sub, "transformers", model=tiny_model, n=3, cache=cache, progress=False,
                    copy=True, **TINY)
    assert more.provenance["generations"] == 6  # one new sample for each of the 6 prompts
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 18


# --- cluster and hybrid modes --------------------------------------------------------------
def test_rank_markers_matches_direct_computation_and_biology(raw68k, gene_list_path):
    genes = [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()]
    groups = raw68k.obs["bulk_labels"].astype(str)
    markers = rank_markers(from_anndata(raw68k), groups, genes, n_markers=30, order="score")
    X = raw68k.X.toarray() if hasattr(raw68k.X, "toarray") else np.asarray(raw68k.X)
    inside = (groups == "CD14+ Monocyte").to_numpy()
    score = X[inside].mean(0) - X[~inside].mean(0)
    frac = (X[inside] != 0).mean(0)
    in_list = np.isin(raw68k.var_names, genes)
    ok = in_list & (score > 0) & (frac >= 0.1)
    expected = raw68k.var_names[ok][np.argsort(-score[ok], kind="stable")][:30]
    assert markers["CD14+ Monocyte"] == list(expected)
    # known biology of the PBMC types
    assert {"FCN1", "AIF1", "LST1", "FCER1G"} <= set(markers["CD14+ Monocyte"][:10])
    assert {"CD79A", "CD79B", "MS4A1"} <= set(markers["CD19+ B"][:10])
    assert {"NKG7", "GNLY", "GZMB"} <= set(markers["CD56+ NK"][:10])
    ranked = rank_markers(from_anndata(raw68k), groups, genes, n_markers=30)
    pos = {g: i for i, g in enumerate(genes)}
    for name, lst in ranked.items():
        assert sorted(lst) == sorted(markers[name])
        assert [pos[g] for g in lst] == sorted(pos[g] for g in lst)


def test_cluster_mode_one_prompt_per_cluster(tiny_model, raw68k, tmp_path):
    # 100 markers, as for CellReasoner models (the tiny model's folder name gets 30)
    res = annotate(raw68k, "transformers", model=tiny_model, mode="cluster", by="bulk_labels",
                   n_markers=100, cache=tmp_path / "c.sqlite", progress=False, **TINY)
    n_groups = raw68k.obs["bulk_labels"].nunique()
    assert res.provenance["unique_prompts"] == res.provenance["model_calls"] == n_groups
    assert res.provenance["by"] == "bulk_labels"
    obs = raw68k.obs
    assert set(_obs_columns(clusters=True)) <= set(obs.columns)
    # every cell carries its cluster's answer
    per_group = obs.groupby("bulk_labels", observed=True)["cellreasoner_response"].nunique()
    assert (per_group == 1).all()
    assert (obs["cellreasoner_cluster_label"] == obs["cellreasoner_label"]).all()
    clusters = res.clusters
    assert clusters.loc["CD14+ Monocyte", "n_cells"] == (obs["bulk_labels"] ==
                                                         "CD14+ Monocyte").sum()
    mono = clusters.loc["CD14+ Monocyte", "markers"].split(", ")
    assert len(mono) <= 100 and {"FCN1", "AIF1", "LYZ"} <= set(mono)
    stored = raw68k.uns["cellreasoner"]["clusters"]
    assert list(stored["cluster"]) == list(clusters.index)
    assert list(stored["label"]) == list(clusters["label"])


def test_cluster_mode_with_marker_file(tiny_model, raw68k, tmp_path):
    groups = sorted(raw68k.obs["bulk_labels"].astype(str).unique())
    rows = [(g, gene) for g in groups for gene in ("NOT_A_GENE", "LYZ", "CD3E", "MS4A1")]
    path = tmp_path / "markers.csv"
    pd.DataFrame(rows, columns=["cluster", "gene"]).to_csv(path, index=False)
    assert read_markers(path)[groups[0]] == ["NOT_A_GENE", "LYZ", "CD3E", "MS4A1"]
    res = annotate(raw68k, "transformers", model=tiny_model, mode="cluster", by="bulk_labels",
                   cluster_markers=path, cache=False, progress=False, **TINY)
    pos = {g: i for i, g in enumerate(
        Path(__import__("os").environ["CELLREASONER_GENE_LIST"]).read_text().split())}
    expected = ", ".join(sorted(["LYZ", "CD3E", "MS4A1"], key=pos.__getitem__))
    assert (res.clusters["markers"] == expected).all()
    # all clusters share one sentence: a single model call
    assert res.provenance["unique_prompts"] == res.provenance["model_calls"] == 1
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({groups[0]: ["LYZ"]}))
    with pytest.raises(InputError, match="no entry for cluster"):
        annotate(raw68k, "transformers", model=tiny_model, mode="cluster", by="bulk_labels",
                 cluster_markers=partial, cache=False, progress=False, **TINY)


def test_hybrid_mode_cluster_majority(tiny_model, raw68k):
    sub = raw68k[:30].copy()
    res = annotate(sub, "transformers", model=tiny_model, mode="hybrid", by="louvain",
                   cache=False, progress=False, **TINY)
    assert res.provenance["model_calls"] == 30
    obs = sub.obs
    for _, grp in obs.groupby("louvain", observed=True):
        keys = [normalize_label(x) for x in grp["cellreasoner_label"]]
        counts = pd.Series([k for k in keys if k]).value_counts()
        best = counts.max() if len(counts) else 0
        assert grp["cellreasoner_cluster_agreement"].iloc[0] == pytest.approx(best / len(grp))
        assert grp["cellreasoner_cluster_label"].nunique() == 1
        if best:
            assert counts[normalize_label(grp["cellreasoner_cluster_label"].iloc[0])] == best


def test_leiden_computed_when_no_cluster_column(tiny_model, raw68k):
    assert "leiden" not in raw68k.obs
    res = annotate(raw68k, "transformers", model=tiny_model, mode="cluster", cache=False,
                   progress=False, **TINY)
    assert "leiden" in raw68k.obs and res.provenance["by"] == "leiden"
    assert res.provenance["unique_prompts"] == raw68k.obs["leiden"].nunique() > 3


# --- outputs ---------------------------------------------------------------------------------
def test_outputs_csv_layout_h5ad_roundtrip_and_copy(tiny_model, raw68k, tmp_path):
    sub = raw68k[:5].copy()
    before = list(sub.obs.columns)
    res = annotate(sub, "transformers", model=tiny_model, label_key="bulk_labels", copy=True,
                   cache=False, progress=False, key_added="cr", **TINY)
    assert list(sub.obs.columns) == before  # copy=True leaves the input alone
    out = res.adata
    assert set(_obs_columns("cr")) <= set(out.obs.columns)
    assert out.obs["cr_evidence_flag"].dtype == bool
    assert isinstance(out.obs["cr_label"].dtype, pd.CategoricalDtype)
    assert not isinstance(out.obs["cr_reasoning"].dtype, pd.CategoricalDtype)
    csv = res.to_csv(tmp_path / "res" / "cells.csv")
    table = pd.read_csv(csv, keep_default_na=False)
    assert list(table.columns[:3]) == ["cell_name", "response", "labels"]
    # a cut-off answer of the tiny model adds the failure column (#13)
    assert [c for c in table.columns[3:] if c != "failure"] == [
        f for f in FIELDS if f != "response"]
    assert list(table["labels"]) == list(sub.obs["bulk_labels"].astype(str))
    assert list(table["cell_name"]) == list(sub.obs_names)
    out.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    prov = back.uns["cr"]
    assert prov["backend"] == "transformers" and prov["model"] == tiny_model
    assert prov["n_cells"] == 5 and prov["mode"] == "cell" and prov["key_added"] == "cr"
    assert float(prov["sampling"]["temperature"]) == 1.0
    assert list(back.obs["cr_label"]) == list(out.obs["cr_label"])


def test_bad_input_errors(raw68k, pbmc68k):
    with pytest.raises(InputError, match="mode must be one of"):
        annotate(raw68k, mode="clusters")
    with pytest.raises(InputError, match="at least 1"):
        annotate(raw68k, n=0)
    with pytest.raises(InputError, match="not in obs"):
        annotate(raw68k, mode="cluster", by="no_such_column", cache=False, progress=False)
    with pytest.raises(InputError, match="only apply to mode='cluster'"):
        annotate(raw68k, cluster_markers={"0": ["LYZ"]}, cache=False, progress=False)
    with pytest.raises(InputError, match="key_added"):
        annotate(raw68k, key_added="bad key")
    with pytest.raises(InputError, match="Unknown backend"):
        annotate(raw68k, "nope")
    with pytest.raises(InputError, match="not found"):
        annotate("/nonexistent/data.h5ad")
    no_raw = pbmc68k.copy()
    del no_raw.raw
    with pytest.raises(InputError, match="negative values"):  # scaled X, nothing else to read
        annotate(no_raw, cache=False, progress=False)


def test_scaled_x_reads_raw_as_scanpy_does(pbmc68k, tmp_path, caplog):
    """scanpy's pbmc68k_reduced: X is scaled, .raw log-normalised; annotate reads .raw (and
    says so) exactly as with use_raw=True, from memory and from an .h5ad path."""
    with caplog.at_level("WARNING"):
        auto = annotate(pbmc68k.copy(), cache=False, progress=False)
    assert "X holds scaled values" in caplog.text and "reading adata.raw" in caplog.text
    assert auto.provenance["layer"] == "raw"
    explicit = annotate(pbmc68k.copy(), use_raw=True, cache=False, progress=False)
    assert auto.table["label"].tolist() == explicit.table["label"].tolist()
    path = tmp_path / "scaled.h5ad"
    pbmc68k.write_h5ad(path)
    from_file = annotate(str(path), cache=False, progress=False)
    assert from_file.table["label"].tolist() == explicit.table["label"].tolist()


def test_cli_annotate_h5ad_and_csv(tiny_model, raw68k, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    raw68k.write_h5ad(src)
    out, csv = tmp_path / "out" / "annotated.h5ad", tmp_path / "out" / "cells.csv"
    rc = main(["annotate", str(src), "-o", str(out), "--csv", str(csv), "--backend",
               "transformers", "--model", tiny_model, "--mode", "cluster", "--by",
               "bulk_labels", "--max-new-tokens", "3", "--temperature", "1", "--label-column",
               "bulk_labels", "--cache", str(tmp_path / "c.sqlite"), "--no-progress",
               "--report", str(tmp_path / "out" / "report.html")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "700 cells, 10 unique prompts, 10 model calls, 0 cache hits" in err
    # the report of a cluster run browses the clusters the run annotated
    assert '"groupby":"bulk_labels"' in (tmp_path / "out" / "report.html").read_text()
    back = ad.read_h5ad(out)
    assert set(_obs_columns(clusters=True)) <= set(back.obs.columns)
    assert back.uns["cellreasoner"]["mode"] == "cluster"
    assert "CD4+/CD45RA+/CD25- Naive T" in list(back.uns["cellreasoner"]["clusters"]["cluster"])
    table = pd.read_csv(csv)
    assert len(table) == 700 and "labels" in table.columns
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes leave no temporary files
    rc = main(["annotate", str(src), "-o", str(tmp_path / "x.txt")])
    assert rc == 2 and "use a .h5ad" in capsys.readouterr().err


# --- the builtin backend (the default: no model download) -------------------------------------
def test_builtin_end_to_end_on_pbmc68k(raw68k, tmp_path):
    res = annotate(raw68k, progress=False, label_key="bulk_labels")
    prov = res.provenance
    assert prov["backend"] == "builtin" and prov["n_cells"] == 700
    assert prov["model_calls"] == 700 and prov["cache"] == ""  # reads expression, no prompts
    obs = raw68k.obs
    assert set(_obs_columns()) <= set(obs.columns)
    conf = obs["cellreasoner_confidence"]
    assert conf.between(0, 1).all()
    assert obs["cellreasoner_ontology_id"].str.startswith("CL:").mean() > 0.9
    assert obs["cellreasoner_reasoning"].str.len().gt(0).all()
    assert obs["cellreasoner_evidence_fraction"].notna().mean() > 0.9
    # the builtin's traces cite genes the cells express
    assert obs["cellreasoner_evidence_flag"].mean() < 0.1
    top = obs.groupby("bulk_labels", observed=True)["cellreasoner_label"].agg(
        lambda x: x.value_counts().index[0])
    assert "monocyte" in top["CD14+ Monocyte"]
    assert "B cell" in top["CD19+ B"]
    assert "NK cell" in top["CD56+ NK"]
    from cellreasoner.evaluation import PairScorer

    scores = PairScorer().score_many(obs["bulk_labels"].astype(str).tolist(),
                                     obs["cellreasoner_label"].tolist())
    assert scores.mean() > 0.6
    csv = pd.read_csv(res.to_csv(tmp_path / "r.csv"))
    assert list(csv.columns[:3]) == ["cell_name", "response", "labels"]


def test_builtin_cluster_and_hybrid(raw68k):
    res = annotate(raw68k, mode="cluster", by="bulk_labels", cache=False, progress=False,
                   key_added="cl")
    # the builtin reads every cell's own evidence and labels each cluster with its consensus
    assert res.provenance["model_calls"] == 700
    assert raw68k.obs.groupby("bulk_labels", observed=True)["cl_label"].nunique().eq(1).all()
    assert raw68k.obs["cl_cluster_mixed"].dtype == bool
    assert set(res.clusters.columns) >= {"label", "agreement", "mixed", "composition"}
    hyb = annotate(raw68k, mode="hybrid", by="louvain", progress=False, key_added="hy")
    assert hyb.provenance["model_calls"] == 700
    agree = raw68k.obs["hy_cluster_agreement"]
    assert agree.between(0, 1).all() and agree.mean() > 0.5
    # hybrid flags the clusters whose consensus had to move above their majority answer
    assert raw68k.obs["hy_cluster_mixed"].dtype == bool
    assert "700 cells, backend='builtin'" in repr(hyb)
    # a later per-cell run under the same key drops the now meaningless cluster columns
    annotate(raw68k, progress=False, key_added="hy")
    assert "hy_cluster_label" not in raw68k.obs and "hy_label" in raw68k.obs


def test_seurat_file_path_input(pbmc_demo_rds):
    res = annotate(str(pbmc_demo_rds), progress=False, label_key="seurat_annotations")
    assert res.adata.n_obs == 35
    assert res.truth is not None and res.truth.nunique() == 7
    assert "cellreasoner_label" in res.adata.obs


def test_cli_readme_main_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["annotate", "pbmc68k_reduced", "-o", "out/pbmc68k.h5ad", "--csv",
               "out/pbmc68k.csv", "--label-column", "bulk_labels", "--report",
               "out/pbmc68k.html"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "700 cells" in err
    assert "wrote out/pbmc68k.h5ad, out/pbmc68k.csv, out/pbmc68k.html" in err
    back = ad.read_h5ad(tmp_path / "out" / "pbmc68k.h5ad")
    assert back.uns["cellreasoner"]["backend"] == "builtin"
    assert back.obs["cellreasoner_label"].str.len().gt(0).all()
    assert back.uns["cellreasoner"]["input"] == "pbmc68k_reduced"
    html = (tmp_path / "out" / "pbmc68k.html").read_text()
    assert "bulk_labels" in html and back.obs["cellreasoner_label"].iloc[0] in html
    assert "pbmc68k_reduced" in html  # the report names its input
    assert main(["annotate", "pbmc68k_reduced", "-o", "x.h5ad", "--report", "r.pdf"]) == 2
    assert "use an .html path" in capsys.readouterr().err
    assert not (tmp_path / "x.h5ad").exists()  # refused before annotating
    with pytest.raises(SystemExit):  # argparse rejects an unknown backend name
        main(["annotate", "pbmc68k_reduced", "-o", "x.h5ad", "--backend", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_tissue_changes_the_prompt_or_restricts_the_builtin(tiny_model, raw68k):
    sub = raw68k[:3].copy()
    plain = annotate(sub, "transformers", model=tiny_model, cache=False, progress=False,
                     copy=True, **TINY)
    blood = annotate(sub, "transformers", model=tiny_model, cache=False, progress=False,
                     copy=True, tissue="blood", **TINY)
    assert blood.provenance["tissue"] == "blood"
    assert not set(plain.table["prompt_key"]) & set(blood.table["prompt_key"])
    res = annotate(raw68k, tissue="blood", progress=False, copy=True)
    assert res.provenance["backend"] == "builtin" and res.provenance["tissue"] == "blood"


def test_interrupt_in_process_keeps_every_finished_prompt(tiny_model, raw68k, tmp_path):
    """Ctrl-C (KeyboardInterrupt) after the first 4 cells: those 4 answers are in the cache
    (stored as they finish, at the latest when their backend call of ``batch_size`` prompts
    returns) and a rerun generates only the other 8."""
    sub = raw68k[:12].copy()
    cache = tmp_path / "b.sqlite"
    seen = []

    def interrupt_after_first_call(cells: float) -> None:
        seen.append(cells)
        if sum(seen) >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annotate(sub, "transformers", model=tiny_model, cache=cache, batch_size=4,
                 progress=interrupt_after_first_call, copy=True, **TINY)
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone()[0] == 4
    res = annotate(sub, "transformers", model=tiny_model, cache=cache, batch_size=4,
                   progress=False, copy=True, **TINY)
    assert (res.provenance["cache_hits"], res.provenance["model_calls"]) == (4, 8)


def test_builtin_default_needs_no_download(raw68k, monkeypatch, tmp_path):
    """No gene list on this machine and no network: the default backend still annotates."""
    monkeypatch.delenv("CELLREASONER_GENE_LIST", raising=False)
    monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path / "empty-cache"))
    res = annotate(raw68k, progress=False)
    assert raw68k.obs["cellreasoner_label"].str.len().gt(0).all()
    assert "custom" in res.provenance["gene_list"]  # the data's own genes
    assert not (tmp_path / "empty-cache" / "ranked_hvg.list").exists()


def test_cli_markers_is_the_builtin_knowledge_file(raw68k, tmp_path, capsys):
    """--markers feeds the builtin's knowledge base; --cluster-markers is for cluster mode."""
    path = tmp_path / "in.h5ad"
    raw68k.write_h5ad(path)
    kb = tmp_path / "kb.tsv"
    kb.write_text("name\tcl_id\tparent\ttissues\tpositive\tnegative\n"
                  "my B cell\tCL:0000236\tnot-a-parent\tblood\tMS4A1:3\t\n")
    rc = main(["annotate", str(path), "-o", str(tmp_path / "o.h5ad"), "--markers", str(kb)])
    err = capsys.readouterr().err
    assert rc == 2 and "kb.tsv" in err  # the builtin read (and refused) the user's file
    rc = main(["annotate", str(path), "-o", str(tmp_path / "o.h5ad"), "--backend", "openai",
               "--markers", str(kb)])
    assert rc == 2
    assert "--cluster-markers" in capsys.readouterr().err


def test_cellxgene_export_uses_the_schema_column(raw68k, tmp_path, capsys):
    res = annotate(raw68k, progress=False)
    res.to_cellxgene()
    ids = raw68k.obs["cell_type_ontology_term_id"].astype(str)
    mapped = raw68k.obs["cellreasoner_ontology_id"].astype(str).str.startswith("CL:")
    assert (ids[mapped] == raw68k.obs["cellreasoner_ontology_id"].astype(str)[mapped]).all()
    assert (ids[~mapped] == "unknown").all()
    path = tmp_path / "in.h5ad"
    raw68k.write_h5ad(path)
    assert main(["annotate", str(path), "-o", str(tmp_path / "o.h5ad"), "--cellxgene"]) == 0
    back = ad.read_h5ad(tmp_path / "o.h5ad")
    assert back.obs["cell_type_ontology_term_id"].astype(str).str.match(r"CL:\d{7}|unknown").all()


def test_cli_assay_keeps_the_input_name(pbmc_demo_rds, tmp_path, capsys):
    out = tmp_path / "demo.h5ad"
    rc = main(["annotate", str(pbmc_demo_rds), "-o", str(out), "--assay", "RNA", "--report",
               str(tmp_path / "demo.html"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert ad.read_h5ad(out).uns["cellreasoner"]["input"] == str(pbmc_demo_rds)
    assert str(pbmc_demo_rds) in (tmp_path / "demo.html").read_text()
