"""The annotation engine on the FakeBackend: dedupe, cache, voting, capabilities, write-back.

The FakeBackend satisfies the real backend protocol without any model, so these tests need no
torch and run in seconds.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellreasoner as cr
from cellreasoner.annotation import FIELDS, annotate
from cellreasoner.backends import Generation
from cellreasoner.backends.builtin import BuiltinBackend
from cellreasoner.backends.fake import FakeBackend
from cellreasoner.errors import BackendError, InputError


def _cells(genes_per_cell: list[list[str]], names: list[str] | None = None) -> ad.AnnData:
    """Log-normalised AnnData whose cells express exactly the given genes."""
    var = sorted({g for cell in genes_per_cell for g in cell} | {"ACTB"})
    col = {g: j for j, g in enumerate(var)}
    rows, cols = [], []
    for i, cell in enumerate(genes_per_cell):
        for g in [*cell, "ACTB"]:
            rows.append(i)
            cols.append(col[g])
    X = sp.csr_matrix((np.full(len(rows), 1.5, np.float32), (rows, cols)),
                      shape=(len(genes_per_cell), len(var)))
    obs = pd.DataFrame(index=names or [f"c{i}" for i in range(len(genes_per_cell))])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=var))


GENE_LIST = ["CD3E", "MS4A1", "NKG7", "LYZ", "ACTB", "CD8A"]


def test_identical_prompts_are_asked_once_and_answers_broadcast(tmp_path):
    adata = _cells([["CD3E"], ["MS4A1"], ["CD3E"], ["CD3E"], ["LYZ"]])
    fake = FakeBackend()
    res = annotate(adata, fake, gene_list=GENE_LIST, cache=False, progress=False)
    assert len(fake.calls) == 3  # three distinct sentences
    assert res.provenance["unique_prompts"] == 3 and res.provenance["model_calls"] == 3
    labels = adata.obs["cellreasoner_label"].astype(str).tolist()
    assert labels == ["T cell", "B cell", "T cell", "T cell", "monocyte"]
    assert adata.obs["cellreasoner_ontology_id"].astype(str).iloc[1] == "CL:0000236"
    # the reasoning cites the expressed marker: evidence present, not flagged
    assert adata.obs["cellreasoner_cited_present"].tolist()[0] == "CD3E"
    assert not adata.obs["cellreasoner_evidence_flag"].any()
    assert np.isnan(adata.obs["cellreasoner_confidence"]).all()  # one sample: not measured


def test_cache_answers_a_rerun_without_calling_the_backend(tmp_path):
    adata = _cells([["CD3E"], ["MS4A1"], ["NKG7"]])
    cache = tmp_path / "gen.sqlite"
    first = FakeBackend()
    annotate(adata, first, gene_list=GENE_LIST, cache=cache, progress=False)
    again = FakeBackend()
    res = annotate(adata.copy(), again, gene_list=GENE_LIST, cache=cache, progress=False)
    assert len(first.calls) == 3 and again.calls == []
    assert res.provenance["cache_hits"] == 3


def test_a_crash_keeps_finished_answers_and_the_rerun_asks_only_the_rest(tmp_path):
    adata = _cells([["CD3E"], ["MS4A1"], ["NKG7"], ["LYZ"]])
    cache = tmp_path / "gen.sqlite"
    with pytest.raises(RuntimeError, match="failing after 2"):
        annotate(adata, FakeBackend(fail_after=2), gene_list=GENE_LIST, cache=cache,
                 batch_size=10, progress=False)
    resumed = FakeBackend()
    res = annotate(adata, resumed, gene_list=GENE_LIST, cache=cache, progress=False)
    assert len(resumed.calls) == 2  # the two prompts answered before the crash came from cache
    assert res.provenance["cache_hits"] == 2


def test_self_consistency_votes_and_agreement_is_the_confidence():
    answers = ["T cell", "T cell", "NK cell"]
    fake = FakeBackend(lambda prompt, s: answers[s])
    adata = _cells([["CD3E"]])
    res = annotate(adata, fake, gene_list=GENE_LIST, n=3, temperature=0.7, cache=False,
                   progress=False)
    assert res.table["label"].iloc[0] == "T cell"
    assert res.table["confidence"].iloc[0] == pytest.approx(2 / 3)
    assert json.loads(res.table["samples"].iloc[0]) == answers


def test_backend_confidence_and_ontology_in_meta_are_kept():
    gen = Generation("custom label", meta={"confidence": 0.42, "ontology_id": "CL:0000084",
                                           "ontology_label": "T cell"})
    res = annotate(_cells([["CD3E"]]), FakeBackend(lambda p, s: gen), gene_list=GENE_LIST,
                   cache=False, progress=False)
    row = res.table.iloc[0]
    assert (row["label"], row["confidence"], row["ontology_id"]) == ("custom label", 0.42,
                                                                     "CL:0000084")


def test_a_backend_returning_the_wrong_number_of_answers_is_an_error():
    class Short(FakeBackend):
        def generate(self, prompts, sampling, progress=None, on_result=None):
            return super().generate(prompts, sampling)[:-1]

    with pytest.raises(BackendError, match="returned 1 answers"):
        annotate(_cells([["CD3E"], ["MS4A1"]]), Short(), gene_list=GENE_LIST, cache=False,
                 progress=False)


def test_engine_configures_every_backend_with_the_run_context():
    fake = FakeBackend()
    annotate(_cells([["CD3E"]]), fake, gene_list=GENE_LIST, max_genes=7, tissue="blood",
             prompt_style="cellreasoner", cache=False, progress=False)
    (ctx,) = fake.contexts
    assert ctx.gene_list == tuple(GENE_LIST) and ctx.max_genes == 7 and ctx.tissue == "blood"
    # a prompt backend does not use the tissue itself: the instruction names it
    assert fake.calls[0].instruction.endswith("The cells come from blood tissue.")
    # the neutral style (any non-CellReasoner model's default) names it in its own words
    fake = FakeBackend()
    annotate(_cells([["CD3E"]]), fake, gene_list=GENE_LIST, tissue="blood", cache=False,
             progress=False)
    assert "human blood tissue" in fake.calls[0].instruction
    assert "tumor" not in fake.calls[0].instruction


def test_builtin_object_behaves_exactly_like_the_builtin_name(pbmc68k):
    """Passing BuiltinBackend() must equal passing "builtin" (it used to fetch the gene list)."""
    a = pbmc68k.raw.to_adata()
    b = a.copy()
    by_name = annotate(a, "builtin", progress=False)
    by_object = annotate(b, BuiltinBackend(), progress=False)
    cols = [c for c in FIELDS if c not in ("confidence", "evidence_fraction")]
    pd.testing.assert_frame_equal(by_name.table[cols], by_object.table[cols])
    np.testing.assert_array_equal(by_name.table["confidence"], by_object.table["confidence"])


def test_backend_options_need_a_backend_named():
    with pytest.raises(InputError, match="only apply to a backend given by name"):
        annotate(_cells([["CD3E"]]), FakeBackend(), backend_options={"x": 1}, progress=False)


def test_streamed_h5ad_path_matches_in_memory_and_writes_without_loading_x(pbmc68k, tmp_path):
    adata = pbmc68k.raw.to_adata()
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    in_memory = annotate(adata.copy(), progress=False)
    streamed = annotate(str(path), progress=False)
    assert streamed.adata.isbacked  # X was never loaded
    pd.testing.assert_frame_equal(in_memory.table, streamed.table)
    out = streamed.write(tmp_path / "out.h5ad")
    back = ad.read_h5ad(out)
    assert (back.X != adata.X).nnz == 0  # the matrix copied as it was
    assert back.obs["cellreasoner_label"].tolist() == in_memory.table["label"].tolist()
    assert back.uns["cellreasoner"]["n_cells"] == adata.n_obs
    assert back.obs["cellreasoner_reasoning"].dtype == object  # free text, not categories


def test_parquet_output_is_the_upstream_table(pbmc68k, tmp_path):
    res = annotate(pbmc68k.raw.to_adata(), progress=False)
    path = res.write(tmp_path / "labels.parquet")
    back = pd.read_parquet(path)
    assert list(back.columns[:2]) == ["cell_name", "response"]
    assert back["label"].tolist() == res.table["label"].tolist()
    with pytest.raises(InputError, match=r"\.h5ad"):
        res.write(tmp_path / "labels.xlsx")


def test_api_written_h5ad_equals_the_cli_written_one(pbmc68k, tmp_path):
    from cellreasoner.cli import main

    src = tmp_path / "in.h5ad"
    pbmc68k.raw.to_adata().write_h5ad(src)
    assert main(["annotate", str(src), "-o", str(tmp_path / "cli.h5ad"), "--no-progress"]) == 0
    cr.annotate(str(src), progress=False).write(tmp_path / "api.h5ad")
    a, b = ad.read_h5ad(tmp_path / "cli.h5ad"), ad.read_h5ad(tmp_path / "api.h5ad")
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for k in ("seconds",):
        a.uns["cellreasoner"].pop(k)
        b.uns["cellreasoner"].pop(k)
    assert json.dumps(a.uns["cellreasoner"], sort_keys=True, default=str) == json.dumps(
        b.uns["cellreasoner"], sort_keys=True, default=str)


def test_an_anndata_opened_backed_is_annotated_without_loading_x(pbmc68k, tmp_path):
    adata = pbmc68k.raw.to_adata()
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    res = annotate(backed, progress=False)
    assert backed.isbacked and res.adata is backed
    want = annotate(adata, progress=False).table
    pd.testing.assert_frame_equal(res.table, want)
    back = ad.read_h5ad(res.write(tmp_path / "out.h5ad"))
    assert back.obs["cellreasoner_label"].tolist() == want["label"].tolist()


def test_cli_writes_the_obs_only_parquet(pbmc68k, tmp_path, capsys):
    from cellreasoner.cli import main

    src = tmp_path / "in.h5ad"
    pbmc68k.raw.to_adata().write_h5ad(src)
    out = tmp_path / "labels.parquet"
    assert main(["annotate", str(src), "-o", str(out), "--no-progress"]) == 0
    table = pd.read_parquet(out)
    assert len(table) == pbmc68k.n_obs and "cellreasoner_label" not in table
    assert {"cell_name", "label", "ontology_id", "evidence_flag"} <= set(table.columns)
    assert str(out) in capsys.readouterr().err


def test_parquet_is_written_in_row_groups_that_read_back_whole(pbmc68k, tmp_path, monkeypatch):
    from cellreasoner.annotation import output

    monkeypatch.setattr(output, "PARQUET_ROWS", 64)  # 700 cells: 11 slices
    res = annotate(pbmc68k.raw.to_adata(), progress=False)
    back = pd.read_parquet(res.write(tmp_path / "labels.parquet"))
    want = res.upstream_frame()
    pd.testing.assert_frame_equal(back, want)


def test_h5ad_text_columns_written_in_slices_read_back_as_anndata_writes_them(tmp_path,
                                                                              monkeypatch):
    """Long text columns go to HDF5 a slice at a time, in anndata's own encoding: the frame
    reads back equal, with the same attributes, as ``write_elem`` writes it whole."""
    import h5py
    from anndata.io import read_elem, write_elem

    from cellreasoner.annotation import output

    monkeypatch.setattr(output, "H5AD_TEXT_ROWS", 5)  # 23 rows: 5 slices
    n = 23
    frame = pd.DataFrame({
        "reasoning": [f"trace {i} " + "é" * i for i in range(n)],  # text, sliced
        "label": pd.Categorical([["T cell", "B cell"][i % 2] for i in range(n)]),
        "confidence": np.linspace(0, 1, n, dtype=np.float32),
        "cited": [", ".join(["CD3E"] * (i % 4)) for i in range(n)],  # "" included
        "flag": np.arange(n) % 2 == 0,
        "count": np.arange(n),
    }, index=[f"cell{i}" for i in range(n)])
    # text with a missing value is left to anndata (which decides how to write it, or not)
    assert not output._all_text(pd.Series(["x", None], dtype=object))

    def written(write) -> tuple[pd.DataFrame, dict, dict]:
        with h5py.File(tmp_path / "obs.h5", "w") as f:
            write(f, "obs", frame)
            g = f["obs"]
            return (read_elem(g), dict(g.attrs), {k: dict(g[k].attrs) if isinstance(
                g[k], h5py.Dataset) else None for k in g})

    for name in (None, "barcode"):  # the index as "_index" or under its own name
        frame.index.name = name
        sliced, group_attrs, attrs = written(output.write_frame)
        whole, want_group, want = written(write_elem)
        pd.testing.assert_frame_equal(sliced, whole)
        assert sliced["reasoning"].tolist() == frame["reasoning"].tolist()
        assert sliced.index.tolist() == frame.index.tolist() and sliced.index.name == name
        assert attrs == want and list(group_attrs["column-order"]) == list(frame.columns)
        assert group_attrs["_index"] == want_group["_index"]


def test_backed_h5ad_output_with_sliced_text_reads_back_whole(pbmc68k, tmp_path, monkeypatch):
    from cellreasoner.annotation import output

    monkeypatch.setattr(output, "H5AD_TEXT_ROWS", 64)  # 700 cells: 11 slices per text column
    path = tmp_path / "in.h5ad"
    pbmc68k.raw.to_adata().write_h5ad(path)
    res = annotate(str(path), progress=False)
    assert res.adata.isbacked
    back = ad.read_h5ad(res.write(tmp_path / "out.h5ad"))
    pd.testing.assert_frame_equal(back.obs, res.adata.obs)
    assert back.obs["cellreasoner_reasoning"].tolist() == res.table["reasoning"].tolist()


def test_the_cli_copies_a_streamed_input_ahead_and_writes_the_same_h5ad(pbmc68k, tmp_path):
    """``annotate IN.h5ad -o OUT.h5ad`` copies IN while it annotates (:class:`CopyAhead`):
    the written file is the one the API writes without the copy ahead, and no copy is left."""
    import h5py

    from cellreasoner.cli import main

    src = tmp_path / "in.h5ad"
    pbmc68k.raw.to_adata().write_h5ad(src)
    out = tmp_path / "out" / "cli.h5ad"
    out.parent.mkdir()
    assert main(["annotate", str(src), "-o", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["cli.h5ad"]
    res = annotate(str(src), progress=False)
    want = ad.read_h5ad(res.write(tmp_path / "api.h5ad"))
    got = ad.read_h5ad(out)
    pd.testing.assert_frame_equal(got.obs, want.obs)
    assert (got.X != want.X).nnz == 0 and got.var_names.equals(want.var_names)
    with h5py.File(out) as f, h5py.File(src) as g:  # X is the input's, byte for byte
        assert np.array_equal(f["X/data"][:], g["X/data"][:])


def test_a_copy_ahead_of_a_changed_input_is_not_used(pbmc68k, tmp_path):
    """The copy is used only for the file it copied, unchanged; an unused copy is removed."""
    from cellreasoner.annotation.output import CopyAhead, write_h5ad

    src = tmp_path / "in.h5ad"
    adata = pbmc68k.raw.to_adata()
    adata.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    with CopyAhead(src, out) as ahead:  # unchanged: the copy is handed over, whole
        taken = ahead.take(src)
    assert taken.read_bytes() == src.read_bytes()
    taken.unlink()
    with CopyAhead(src, out) as ahead:
        copy = ahead.tmp
        assert copy.parent == tmp_path and copy.name.endswith(".ahead.h5ad")
        changed = adata[:100].copy()
        changed.write_h5ad(src)  # rewritten after the copy started: the copy is stale
        res = annotate(str(src), progress=False)
        write_h5ad(res.adata, out, ahead=ahead)
    assert not copy.exists()
    assert ad.read_h5ad(out).n_obs == 100  # written from the file as it is now
    with CopyAhead(src, out) as ahead:  # never taken: removed on leaving
        copy = ahead.tmp
    assert not copy.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]


def test_a_reused_builtin_object_does_not_keep_an_earlier_runs_tissue(pbmc68k):
    be = BuiltinBackend()
    adata = pbmc68k.raw.to_adata()
    blood = annotate(adata.copy(), be, tissue="blood", progress=False)
    whole = annotate(adata.copy(), be, progress=False)
    assert blood.provenance["tissue"] == "blood" and "tissue" not in whole.provenance
    assert whole.provenance["cell_types"] > blood.provenance["cell_types"]


def test_csc_h5ad_path_is_read_into_memory_instead_of_streamed(pbmc68k, tmp_path):
    adata = pbmc68k.raw.to_adata()
    csc = adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    path = tmp_path / "csc.h5ad"
    csc.write_h5ad(path)
    res = annotate(str(path), progress=False)
    assert not res.adata.isbacked
    pd.testing.assert_frame_equal(res.table, annotate(adata, progress=False).table)


def test_copy_of_a_backed_anndata_is_a_clear_error(pbmc68k, tmp_path):
    path = tmp_path / "in.h5ad"
    pbmc68k.raw.to_adata().write_h5ad(path)
    with pytest.raises(InputError, match="to_memory"):
        annotate(ad.read_h5ad(path, backed="r"), copy=True, progress=False)


def test_a_backend_without_the_protocols_callbacks_gets_a_clear_error():
    class Old(FakeBackend):
        def generate(self, prompts, sampling):  # an old-style backend: no callbacks
            return [[Generation("T cell")] for _ in prompts]

    with pytest.raises(BackendError, match="must accept progress= and on_result="):
        annotate(_cells([["CD3E"]]), Old(), gene_list=GENE_LIST, cache=False, progress=False)
