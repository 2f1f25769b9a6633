"""Mouse data: species detection, human <-> mouse orthologs (the Ensembl 105 table that
CellTypist ships, read here from the installed celltypist package, and its pinned download
against a real HTTP server on 127.0.0.1), the built-in reasoner on mouse symbols, prompts
that keep the user's symbols, and clear errors."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import re
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import cellreasoner as cr
from cellreasoner import resources
from cellreasoner.backends.builtin.markers import (
    builtin_marker_path,
    load_markers,
    read_marker_file,
)
from cellreasoner.errors import InputError
from cellreasoner.species import (
    detect_species,
    load_orthologs,
    mouse_marker_path,
    resolve_species,
    supplement_path,
)


def _celltypist_table() -> Path:
    spec = importlib.util.find_spec("celltypist")
    if spec is None or spec.origin is None:
        pytest.fail("celltypist (a test dependency) is not installed: pip install "
                    "'cellreasoner[test]'")
    return Path(spec.origin).parent / "data" / "samples" / resources.ORTHOLOGS_FILE


@pytest.fixture(scope="session")
def ortholog_table() -> Path:
    """The installed celltypist copy of the table the product downloads."""
    return _celltypist_table()


@pytest.fixture(autouse=True)
def _orthologs_env(monkeypatch, ortholog_table):
    monkeypatch.setenv(resources.ORTHOLOGS_ENV, str(ortholog_table))


@pytest.fixture(scope="module")
def o2o() -> dict[str, str]:
    return load_orthologs(_celltypist_table()).one_to_one()


def _to_mouse(adata, o2o: dict[str, str]):
    """``adata`` with only its one-to-one-ortholog genes, renamed to the mouse symbols."""
    keep = np.array([g in o2o for g in adata.var_names])
    out = adata[:, keep].copy()
    out.var_names = [o2o[g] for g in out.var_names]
    return out


def _plain(labels) -> np.ndarray:
    """Labels without the species of CL's species-specific terms (ILC2 ', human' / ', mouse')."""
    return np.array([str(x).removesuffix(", human").removesuffix(", mouse") for x in labels])


def _labels(adata, **kw) -> np.ndarray:
    return _plain(cr.annotate(adata, progress=False, cache=False, **kw).table["label"])


# --- the ortholog table ----------------------------------------------------------------------
def test_the_table_is_the_pinned_one_and_pairs_are_one_to_one(ortholog_table, o2o):
    import hashlib

    assert hashlib.sha256(ortholog_table.read_bytes()).hexdigest() == resources.ORTHOLOGS_SHA256
    assert o2o["CD3E"] == "Cd3e" and o2o["CST3"] == "Cst3"  # Cst3 among paralogs, by name
    assert len(set(o2o.values())) == len(o2o) > 15_000
    assert "GNLY" not in o2o  # no mouse ortholog


def test_supplement_pairs_are_used_and_one_to_one(o2o, ortholog_table):
    rows = [line.split("\t") for line in supplement_path().read_text().splitlines()
            if line and not line.startswith("#")][1:]
    assert len(rows) >= 10
    orth = load_orthologs()
    for human, mouse, source in rows:
        assert source.strip(), f"{human}: no source"
        if mouse:
            assert o2o[human] == mouse, human
        else:  # no mouse counterpart: the table's pair is dropped for markers too
            assert human not in orth.to_mouse() and human not in o2o, human
    assert orth.to_mouse()["FCGR3B"] == "Fcgr4"  # a paralog's only ortholog, for markers
    # the table's only partner of SIGLEC8 is Siglece, a neutrophil Siglec in mouse: dropped
    assert "SIGLEC8,Siglece" in ortholog_table.read_text().splitlines()
    assert ("SIGLEC8", "Siglece") not in orth.pairs and "SIGLEC8" not in orth.human_symbols


def test_mouse_marker_rows_name_builtin_types_and_add_only_new_markers():
    builtin = {t.name: t for t in read_marker_file(builtin_marker_path())}
    rows = read_marker_file(mouse_marker_path(), require_tree=False)
    assert len(rows) >= 15
    to_mouse = load_orthologs().to_mouse()
    for t in rows:
        assert t.name in builtin, f"{t.name}: not a built-in type"
        assert (t.cl_id, t.parent) == (builtin[t.name].cl_id, builtin[t.name].parent)
        assert re.search(r"\b(19|20)\d\d\b", t.source), f"{t.name}: no cited source"
        # a row adds mouse usage (Ly6c2, Treml4, S1pr5 in mouse effectors): never a gene the
        # type's human markers already reach through their orthologs
        human = builtin[t.name]
        reached = {to_mouse[g] for g in [*human.positive, *human.negative] if g in to_mouse}
        for gene in [*t.positive, *t.negative]:
            assert gene not in reached, f"{t.name}: {gene} is one of its human markers"
            assert not gene.isupper(), f"{t.name}: {gene} is not an MGI symbol"


def test_pinned_download_second_source_cache_and_tampering(tmp_path, monkeypatch,
                                                           ortholog_table):
    import hashlib
    import zipfile

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.delenv(resources.ORTHOLOGS_ENV)
    monkeypatch.setattr(resources, "ORTHOLOGS_URL", f"{base}/t.csv")
    monkeypatch.setattr(resources, "ORTHOLOGS_WHEEL_URL", f"{base}/ct.whl")
    wheel = www / "ct.whl"  # a wheel holding the table where celltypist's does
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(resources.ORTHOLOGS_WHEEL_MEMBER, ortholog_table.read_bytes())
    monkeypatch.setattr(resources, "ORTHOLOGS_WHEEL_SHA256",
                        hashlib.sha256(wheel.read_bytes()).hexdigest())
    try:
        # both sources tampered: refused, nothing cached
        monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path / "bad"))
        (www / "t.csv").write_text("CD3E,Cd3e\n")
        good_wheel = wheel.read_bytes()
        wheel.write_bytes(b"PK not the wheel")
        with pytest.raises(InputError, match="(?s)hash.*second source failed too.*hash"):
            load_orthologs()
        assert not (tmp_path / "bad" / resources.ORTHOLOGS_FILE).exists()
        # the first source answers: downloaded once, then the cache answers
        cache = tmp_path / "cache"
        monkeypatch.setenv("CELLREASONER_CACHE", str(cache))
        (www / "t.csv").write_bytes(ortholog_table.read_bytes())
        assert load_orthologs().one_to_one()["CD3E"] == "Cd3e"
        (www / "t.csv").unlink()
        assert load_orthologs().one_to_one()["CD8A"] == "Cd8a"
        # the first source gone: the table comes out of the wheel, checked, the wheel deleted
        wheel.write_bytes(good_wheel)
        monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path / "second"))
        path = resources.ortholog_table_path()
        assert path == tmp_path / "second" / resources.ORTHOLOGS_FILE
        assert path.read_bytes() == ortholog_table.read_bytes()
        assert sorted(p.name for p in path.parent.iterdir()) == [resources.ORTHOLOGS_FILE]
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setenv("CELLREASONER_CACHE", str(tmp_path / "offline"))
    with pytest.raises(InputError) as err:  # the server is gone: the offline message
        load_orthologs()
    assert resources.ORTHOLOGS_ENV in str(err.value)
    assert str(tmp_path / "offline" / resources.ORTHOLOGS_FILE) in str(err.value)


def test_a_bad_local_table_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_orthologs(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("only-one-column\n")
    with pytest.raises(InputError, match="bad.csv.*row 1"):
        load_orthologs(bad)


# --- detection -------------------------------------------------------------------------------
def test_detection_from_symbol_case(pbmc68k, o2o):
    human = detect_species(pbmc68k.raw.var_names)
    assert human.species == "human" and "auto" in human.how
    mouse = detect_species(_to_mouse(pbmc68k.raw.to_adata(), o2o).var_names)
    assert mouse.species == "mouse" and "mouse-style" in mouse.how
    assert detect_species(["ENSMUSG00000002111", "ENSMUSG00000032094"]).species == "mouse"
    assert detect_species(["C1orf56", "CD3E", "mt-Co1"]).species == "human"
    assert detect_species(["1", "2"]).species == "human"  # nothing informative
    assert resolve_species("Mus musculus", []).species == "mouse"
    assert resolve_species("human", ["Cd3e"]).how == "given"


def test_unknown_species_is_one_clear_error(pbmc68k):
    with pytest.raises(InputError, match="Unknown species 'rat'.*auto, human, mouse"):
        cr.annotate(pbmc68k, species="rat", progress=False, cache=False)


# --- the built-in reasoner on mouse symbols --------------------------------------------------
@pytest.mark.parametrize("dataset", ["pbmc68k_reduced", "tumour_immune_1000"])
def test_mouse_symbols_give_the_human_labels(dataset, pbmc68k, shared_data, o2o):
    human = (pbmc68k.raw.to_adata() if dataset == "pbmc68k_reduced"
             else ad.read_h5ad(shared_data / "tumour_immune_1000.h5ad"))
    mouse = _to_mouse(human, o2o)
    res = cr.annotate(mouse, progress=False, cache=False)  # species="auto"
    got = _plain(res.table["label"])
    prov = res.provenance
    assert prov["species"] == "mouse" and "mouse-style" in prov["species_detection"]
    assert prov["knowledge_base"].endswith("+mouse")
    # the species layer loses nothing: without the genes markers_mouse.tsv adds, the same
    # labels as the human data on the same genes
    added = {g for t in read_marker_file(mouse_marker_path(), require_tree=False)
             for g in [*t.positive, *t.negative]}
    assert added & set(mouse.var_names)  # Ccr2, Treml4, S1pr5 ... carry evidence here
    plain_mouse = mouse[:, ~mouse.var_names.isin(list(added))].copy()
    back = {m: h for h, m in o2o.items()}
    same_genes = human[:, human.var_names.isin([back[g] for g in plain_mouse.var_names])].copy()
    assert (_labels(plain_mouse) == _labels(same_genes, species="human")).mean() >= 0.99
    # against the human originals the genes with no mouse ortholog (GNLY, GZMH, FGFBP2,
    # IL32, HLA-DPB1, CD1C, S100A12 ...) are missing (bench/species.py --diagnose shows
    # which moves each causes): measured 0.880 on pbmc68k and 0.860 on tumour_immune with
    # the mouse rows of markers_mouse.tsv (0.877 and 0.844 without them). #14's target of
    # 0.95 is not met; the floors keep a margin of about 0.02 below the measured figures.
    want = _labels(human)
    assert (got == want).mean() >= {"pbmc68k_reduced": 0.86,
                                    "tumour_immune_1000": 0.84}[dataset]
    # ... and they move labels within a lineage only (measured 0.973 and 0.974)
    db = load_markers()

    def root(label: str) -> str:
        return db.lineage(label)[0] if label in db else label.split(",")[0]

    assert np.mean([root(a) == root(b) for a, b in zip(got, want, strict=True)]) >= 0.95
    traces = " ".join(res.table["reasoning"].head(50))
    assert "Cd3e" in traces or "Cd3d" in traces or "Ms4a1" in traces
    assert "CD3E" not in traces and "MS4A1" not in traces


def test_cluster_mode_reads_mouse_marker_sentences(pbmc68k, o2o):
    human = pbmc68k.raw.to_adata()
    human.obs["louvain"] = pbmc68k.obs["louvain"].to_numpy()
    same_genes = human[:, [g in o2o for g in human.var_names]].copy()
    mouse = _to_mouse(human, o2o)
    kw = {"mode": "cluster", "by": "louvain"}
    got = _labels(mouse, **kw)
    assert (got == _labels(same_genes, species="human", **kw)).all()
    assert (got != "Unknown").mean() > 0.9


def test_mouse_knowledge_base_uses_mouse_symbols_and_mouse_terms():
    from cellreasoner.species import mouse_marker_db

    human = load_markers()
    mouse = mouse_marker_db(human, load_orthologs())
    assert mouse.version.endswith("+mouse")
    nk = mouse["NK cell"].positive
    assert nk["Klrb1c"] == 3 and nk["Ncr1"] == human["NK cell"].positive["NCR1"]
    assert "GNLY" not in nk and not any(g.isupper() and len(g) > 3 for g in nk)
    assert mouse["non-classical monocyte"].positive["Fcgr4"] == 3  # FCGR3A's ortholog
    # mouse usage added by markers_mouse.tsv: Ly6C-low Treml4, Ccr2 on Ly6C-high monocytes
    assert mouse["non-classical monocyte"].positive["Treml4"] == 2
    assert mouse["non-classical monocyte"].negative["Ccr2"] == 2
    assert mouse["classical monocyte"].positive["Ccr2"] == 2
    # the table pairs LYZ and S100A9 with 9530003J23Rik and Gm5849: the supplement gives
    # the genes a mouse dataset measures
    mono = mouse["classical monocyte"].positive
    assert mono["S100a9"] == 2 and mono["Lyz2"] == 1
    assert not {"Gm5849", "9530003J23Rik"} & set(mono)
    assert mouse["Paneth cell"].positive["Lyz1"] == 2
    # SIGLEC8 (human eosinophils) has no mouse counterpart; Siglec-F stands for it
    eos = mouse["eosinophil"]
    assert eos.positive["Siglecf"] == 3 and "Siglece" not in eos.positive
    temra = mouse["terminally differentiated effector memory CD8-positive T cell"]
    assert temra.positive["S1pr5"] == 1 and "mouse: " in temra.source
    ilc2 = mouse["group 2 innate lymphoid cell, mouse"]
    assert ilc2.cl_id == "CL:0002089" and "group 2 innate lymphoid cell, human" not in mouse
    assert mouse.parent_of(ilc2.name) == "innate lymphoid cell"


def test_a_backend_object_and_a_user_marker_file_follow_the_species(pbmc68k, o2o, tmp_path):
    from cellreasoner.backends.builtin import BuiltinBackend

    mouse = _to_mouse(pbmc68k.raw.to_adata(), o2o)
    be = BuiltinBackend()
    res = cr.annotate(mouse, be, species="mouse", progress=False, cache=False)
    assert be.species == "mouse" and res.provenance["species"] == "mouse"
    assert (res.table["label"] != "Unknown").mean() > 0.9
    # a user's marker row in mouse symbols is kept as written
    user = tmp_path / "mine.tsv"
    user.write_text("name\tcl_id\tparent\ttissues\tpositive\tnegative\tsource\n"
                    "platelet\tCL:0000233\tCL:0000763\tblood\tPpbp:3,Pf4:3\t\tmine\n")
    be = BuiltinBackend(markers=user)
    cr.annotate(mouse, be, species="mouse", progress=False, cache=False)
    assert be.reasoner.db["platelet"].positive == {"Ppbp": 3.0, "Pf4": 3.0}


def test_no_overlap_errors_name_the_fix(pbmc68k, o2o):
    human = pbmc68k.raw.to_adata()
    with pytest.raises(InputError, match="--species human"):
        cr.annotate(human, species="mouse", progress=False, cache=False)
    with pytest.raises(InputError, match="species='mouse'"):
        cr.annotate(_to_mouse(human, o2o), species="human", progress=False, cache=False)


# --- prompts and prepared sentences keep the user's symbols ----------------------------------
def test_prompts_keep_mouse_symbols_in_ranked_order(pbmc68k, o2o):
    from cellreasoner.backends.fake import FakeBackend

    human = pbmc68k.raw.to_adata()[:20].copy()
    mouse = _to_mouse(human, o2o)
    fake = FakeBackend()
    cr.annotate(mouse, fake, progress=False, cache=False)
    assert fake.contexts[0].species == "mouse"
    mouse_sentence = fake.calls[0].sentence.split(", ")
    assert "Cd3e" in set().union(*(p.sentence.split(", ") for p in fake.calls))
    # the same genes in the same (published) order as the human sentence on the same genes
    sents, _ = cr.prepare(human[:, [g in o2o for g in human.var_names]], species="human")
    human_sentence = sents.sentence(0).split(", ")
    assert mouse_sentence == [o2o[g] for g in human_sentence]
    mouse_sents, summary = cr.prepare(mouse)
    assert mouse_sents.sentence(0).split(", ") == mouse_sentence
    assert any("species: mouse" in n for n in summary.notes)


def test_cli_species_mouse_end_to_end(pbmc68k, o2o, tmp_path, caplog, capsys):
    import logging

    from cellreasoner.cli import main

    path = tmp_path / "mouse.h5ad"
    _to_mouse(pbmc68k.raw.to_adata(), o2o).write_h5ad(path)
    out = tmp_path / "out.h5ad"
    with caplog.at_level(logging.INFO, logger="cellreasoner"):
        assert main(["annotate", str(path), "-o", str(out), "--species", "auto", "--no-cache",
                     "--no-progress"]) == 0
    assert any(r.getMessage().startswith("species: mouse (auto: ") for r in caplog.records)
    got = ad.read_h5ad(out)
    assert got.uns["cellreasoner"]["species"] == "mouse"
    assert "mouse-style" in got.uns["cellreasoner"]["species_detection"]
    assert (got.obs["cellreasoner_label"] != "Unknown").mean() > 0.9
    prompts = tmp_path / "prompts.json"
    assert main(["prepare", str(path), "-o", str(prompts), "--species", "mouse"]) == 0
    first = json.loads(prompts.read_text())[0]["input"].split(", ")
    assert first and all(g in set(o2o.values()) for g in first)
    with pytest.raises(SystemExit):
        main(["annotate", str(path), "-o", str(tmp_path / "x.h5ad"), "--species", "rat"])
    assert "invalid choice: 'rat'" in capsys.readouterr().err
