"""Cell sentences: byte-identity with the upstream CellReasoner prompt files, and scale paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from cellreasoner.errors import InputError
from cellreasoner.resources import load_gene_list
from cellreasoner.sentences import CellSentences, build_sentences, iter_parquet, read_compact
from cellreasoner.sentences.prepare import prepare

RECORD_FIELDS = ("cell_name", "instruction", "input", "output")


@pytest.fixture(scope="module")
def ranked_genes(gene_list_path):
    return load_gene_list(gene_list_path)


@pytest.fixture
def pbmc68k_raw(pbmc68k):
    return pbmc68k.raw.to_adata()


def _assert_same_records(ours_path, upstream_path):
    ours = json.loads(ours_path.read_text())
    theirs = json.loads(upstream_path.read_text())
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for key in RECORD_FIELDS:
            assert a.get(key) == b.get(key), (key, b["cell_name"])
            assert (key in a) == (key in b)


def test_pbmc68k_json_is_byte_identical(tmp_path, pbmc68k_raw, ranked_genes, upstream_prompts_dir):
    out = tmp_path / "pbmc68k.json"
    cs = build_sentences(pbmc68k_raw, ranked_genes, label_key="bulk_labels")
    cs.to_json(out)
    upstream = upstream_prompts_dir / "pbmc68k_raw_labeled.json"
    _assert_same_records(out, upstream)
    assert out.read_bytes() == upstream.read_bytes()


@pytest.mark.parametrize(
    ("fname", "reasoning", "labels"),
    [("pbmc_demo_labeled.json", False, True), ("pbmc_demo_reasoning.json", True, False)],
)
def test_pbmc_demo_rds_matches_upstream(tmp_path, pbmc_demo_rds, upstream_prompts_dir, fname,
                                        reasoning, labels):
    """Seurat v5 .rds -> AnnData (X = data layer) -> prompts identical to the upstream files."""
    out = tmp_path / fname
    prepare(pbmc_demo_rds, out, label_key="seurat_annotations" if labels else None,
            reasoning=reasoning)
    _assert_same_records(out, upstream_prompts_dir / fname)
    assert out.read_bytes() == (upstream_prompts_dir / fname).read_bytes()


def test_chunking_does_not_change_sentences(pbmc68k_raw, ranked_genes, monkeypatch):
    import cellreasoner.sentences.core as sentences

    whole = build_sentences(pbmc68k_raw, ranked_genes, chunk_size=10_000)
    chunked = build_sentences(pbmc68k_raw, ranked_genes, chunk_size=7)
    assert list(whole.iter_sentences()) == list(chunked.iter_sentences())
    # row blocks selected on parallel threads give the same sentences
    monkeypatch.setattr(sentences, "_PARALLEL_MIN_ROWS", 1)
    monkeypatch.setattr(sentences.os, "cpu_count", lambda: 3)
    parallel = build_sentences(pbmc68k_raw, ranked_genes, chunk_size=500)
    assert list(parallel.iter_sentences()) == list(whole.iter_sentences())


def test_ranked_order_and_truncation(pbmc68k_raw, ranked_genes):
    cs = build_sentences(pbmc68k_raw, ranked_genes, max_genes=25)
    rank = {g: i for i, g in enumerate(ranked_genes)}
    X = sp.csr_matrix(pbmc68k_raw.X)
    names = np.asarray(pbmc68k_raw.var_names)
    for i in (0, 17, 699):
        genes = cs.cell_genes(i)
        expressed = {g for g in names[X[i].indices[X[i].data != 0]] if g in rank}
        expected = sorted(expressed, key=rank.__getitem__)[:25]
        assert genes == expected
        assert len(genes) <= 25


def test_expression_order_sorts_by_the_cells_own_values(pbmc68k_raw):
    cs = build_sentences(pbmc68k_raw, order="expression", max_genes=50)
    X = sp.csr_matrix(pbmc68k_raw.X)
    col = {g: j for j, g in enumerate(pbmc68k_raw.var_names)}
    for i in (3, 400):
        values = [X[i, col[g]] for g in cs.cell_genes(i)]
        assert len(values) == 50
        assert all(v > 0 for v in values)
        assert values == sorted(values, reverse=True)
        assert values[0] == X[i].data.max()


def test_custom_gene_list_controls_vocabulary_and_order(pbmc68k_raw):
    custom = ["MS4A1", "CD3E", "LYZ", "NKG7", "CD79A", "NOT_A_GENE"]
    cs = build_sentences(pbmc68k_raw, custom)
    for i in range(0, 700, 50):
        genes = cs.cell_genes(i)
        assert set(genes) <= set(custom)
        assert genes == sorted(genes, key=custom.index)


def test_compact_roundtrips_through_parquet_and_jsonl(tmp_path, pbmc68k_raw, ranked_genes):
    cs = build_sentences(pbmc68k_raw, ranked_genes, label_key="bulk_labels")
    assert cs.indices.dtype == np.uint16
    cs.to_parquet(tmp_path / "c.parquet")
    back = CellSentences.read_parquet(tmp_path / "c.parquet")
    assert list(back.iter_sentences()) == list(cs.iter_sentences())
    assert list(back.labels) == list(cs.labels)
    assert sum(len(p) for p in iter_parquet(tmp_path / "c.parquet", batch_size=64)) == 700
    cs.to_arrow(tmp_path / "c.arrow")
    arrow = read_compact(tmp_path / "c.arrow")
    assert list(arrow.iter_sentences()) == list(cs.iter_sentences())
    assert list(arrow.cell_names) == list(cs.cell_names)
    cs.to_jsonl(tmp_path / "c.jsonl", reasoning=True)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == 700
    rec = json.loads(lines[5])
    assert rec["input"] == cs.sentence(5) and "<think></think>" in rec["instruction"]


def test_h5ad_streaming_equals_in_memory(tmp_path, pbmc68k_raw, ranked_genes):
    path = tmp_path / "p.h5ad"
    pbmc68k_raw.write_h5ad(path)
    sentences, _ = prepare(path, gene_list=ranked_genes, chunk_size=64)
    memory = build_sentences(pbmc68k_raw, ranked_genes)
    assert list(sentences.iter_sentences()) == list(memory.iter_sentences())
    assert list(sentences.cell_names) == list(pbmc68k_raw.obs_names)


def test_prepare_writes_atomically_and_reports(tmp_path, pbmc68k_raw, ranked_genes):
    out = tmp_path / "x.parquet"
    result, summary = prepare(pbmc68k_raw, out, gene_list=ranked_genes)
    assert result is None and out.exists()
    assert sorted(tmp_path.iterdir()) == [out]  # no temporary file left behind
    assert summary.n_cells == 700
    assert summary.n_genes_matched == len(set(ranked_genes) & set(pbmc68k_raw.var_names))
    assert summary.expression == "log-normalised"
    assert "700 cells" in summary.line()


def test_negative_values_name_the_problem(pbmc68k, ranked_genes, tmp_path):
    # pbmc68k_reduced's X is scaled (has negatives): a classic wrong-layer mistake; without
    # a .raw to fall back on, it is refused
    scaled = pbmc68k.copy()
    del scaled.raw
    with pytest.raises(InputError, match="negative values"):
        prepare(scaled, tmp_path / "x.json", gene_list=ranked_genes)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a partial file


def test_scaled_x_reads_raw_as_annotate_does(pbmc68k, pbmc68k_raw, ranked_genes, caplog):
    """Scaled X with a log-normalised .raw: prepare reads .raw (and says so), giving the
    sentences of the .raw matrix itself."""
    import logging

    with caplog.at_level(logging.WARNING):
        got, summary = prepare(pbmc68k, gene_list=ranked_genes)
    assert "reading adata.raw" in caplog.text
    want, _ = prepare(pbmc68k_raw, gene_list=ranked_genes)
    assert [got.cell_genes(i) for i in range(700)] == [want.cell_genes(i) for i in range(700)]
    assert summary.n_cells == 700 and summary.expression == "log-normalised"


def test_nan_values_are_refused(pbmc68k_raw, ranked_genes):
    X = sp.csr_matrix(pbmc68k_raw.X, copy=True)
    X.data[10] = np.nan
    pbmc68k_raw.X = X
    with pytest.raises(InputError, match="NaN"):
        prepare(pbmc68k_raw, gene_list=ranked_genes)


def test_zero_overlap_is_explained(pbmc68k_raw):
    with pytest.raises(InputError, match="Ensembl"):
        build_sentences(pbmc68k_raw, ["ENSG00000000003", "ENSG00000000005"])


def test_empty_cells_are_refused_unless_allowed(pbmc68k_raw, ranked_genes):
    X = sp.csr_matrix(pbmc68k_raw.X, copy=True).tolil()
    X[3, :] = 0
    pbmc68k_raw.X = sp.csr_matrix(X)
    with pytest.raises(InputError, match=pbmc68k_raw.obs_names[3]):
        prepare(pbmc68k_raw, gene_list=ranked_genes)
    cs, summary = prepare(pbmc68k_raw, gene_list=ranked_genes, allow_empty=True)
    assert cs.sentence(3) == "" and summary.empty_sentences == 1


def test_duplicate_cell_names_are_refused(pbmc68k_raw, ranked_genes):
    names = list(pbmc68k_raw.obs_names)
    names[1] = names[0]
    pbmc68k_raw.obs_names = names
    with pytest.raises(InputError, match="duplicate cell names"):
        prepare(pbmc68k_raw, gene_list=ranked_genes)


def test_missing_label_column_lists_columns(pbmc68k_raw, ranked_genes):
    with pytest.raises(InputError, match="bulk_labels"):
        build_sentences(pbmc68k_raw, ranked_genes, label_key="cell_type")


def test_cli_prepare_writes_upstream_json(tmp_path, pbmc68k_raw, gene_list_path, capsys,
                                          upstream_prompts_dir):
    from cellreasoner.cli import main

    path = tmp_path / "in.h5ad"
    pbmc68k_raw.write_h5ad(path)
    out = tmp_path / "out.json"
    code = main(["prepare", str(path), "-o", str(out), "--gene-list", str(gene_list_path),
                 "--label-column", "bulk_labels"])
    assert code == 0
    assert out.read_bytes() == (upstream_prompts_dir / "pbmc68k_raw_labeled.json").read_bytes()
    assert "700 cells" in capsys.readouterr().err


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from cellreasoner.cli import main

    code = main(["prepare", str(tmp_path / "missing.h5ad"), "-o", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.h5ad" in err and "Traceback" not in err


def test_ensembl_var_names_use_the_symbol_column(pbmc68k_raw, ranked_genes):
    """CELLxGENE-style AnnData: Ensembl IDs as var_names, symbols in var['feature_name']."""
    expected = list(build_sentences(pbmc68k_raw, ranked_genes).iter_sentences())
    pbmc68k_raw.var["feature_name"] = pbmc68k_raw.var_names.astype(str)
    pbmc68k_raw.var_names = [f"ENSG{i:011d}" for i in range(pbmc68k_raw.n_vars)]
    assert list(build_sentences(pbmc68k_raw, ranked_genes).iter_sentences()) == expected


def test_prepare_names_stay_the_function():
    """``prepare`` is a function and a submodule's name: importing the module rebinds neither."""
    import importlib

    import cellreasoner as cr
    import cellreasoner.sentences
    import cellreasoner.sentences.prepare  # noqa: F401

    module = importlib.import_module("cellreasoner.sentences.prepare")
    for fn in (cr.prepare, cr.pp.prepare, cellreasoner.sentences.prepare):
        assert callable(fn) and fn.__module__ == "cellreasoner.sentences.prepare"
        assert fn is module.prepare
    assert cr.pp.sentences is cr.build_sentences is cellreasoner.sentences.build_sentences
    assert cr.CellSentences is cellreasoner.sentences.CellSentences
