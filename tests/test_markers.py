"""The built-in marker knowledge base is consistent with the Cell Ontology and gene symbols."""

from __future__ import annotations

import re

import pytest

from cellreasoner.backends.builtin.markers import (
    COLUMNS,
    builtin_marker_path,
    load_markers,
    read_marker_file,
)
from cellreasoner.errors import InputError

HEADER = "\t".join(COLUMNS) + "\n"


@pytest.fixture(scope="module")
def db():
    return load_markers()


@pytest.fixture(scope="module")
def parser():
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    return OntologyParser()


def test_at_least_150_unique_types_with_sources(db):
    assert len(db) >= 150
    assert len(set(db.names)) == len(db.names)
    assert all(t.source.strip() for t in db.types), "every entry cites its source"
    assert all(t.tissues for t in db.types)


def test_required_pbmc_and_tissue_types_present(db):
    for name in ["naive CD4-positive T cell", "memory CD4-positive T cell",
                 "CD4-positive regulatory T cell",
                 "T follicular helper cell", "T-helper 1 cell", "T-helper 2 cell",
                 "T-helper 17 cell", "naive CD8-positive T cell",
                 "effector memory CD8-positive T cell", "central memory CD8-positive T cell",
                 "terminally differentiated effector memory CD8-positive T cell",
                 "mucosal-associated invariant T cell", "gamma-delta T cell",
                 "CD56-bright NK cell", "CD56-dim NK cell", "innate lymphoid cell",
                 "naive B cell", "memory B cell", "plasmablast", "plasma cell",
                 "classical monocyte", "non-classical monocyte",
                 "cDC1 (CD141-positive myeloid dendritic cell)",
                 "cDC2 (CD1c-positive myeloid dendritic cell)",
                 "plasmacytoid dendritic cell", "mast cell", "basophil", "neutrophil",
                 "eosinophil", "platelet", "megakaryocyte", "erythrocyte",
                 "hematopoietic precursor cell (HSPC)", "hepatocyte",
                 "pulmonary alveolar type 2 cell", "podocyte", "keratinocyte",
                 "type B pancreatic cell", "fibroblast", "endothelial cell", "pericyte",
                 "astrocyte", "cardiac muscle cell",
                 "myCAF (myofibroblastic cancer-associated fibroblast)",
                 "iCAF (inflammatory cancer-associated fibroblast)",
                 "apCAF (antigen-presenting cancer-associated fibroblast)",
                 "TREM2+ tumour-associated macrophage", "malignant cell",
                 "cycling T cell"]:
        assert name in db, name


def test_names_ground_to_their_own_cl_terms(db):
    """The label text maps back to the entry's CL id, so text-based scoring agrees."""
    from cellreasoner.ontology import map_label

    wrong = [(t.name, t.cl_id, map_label(t.name).id) for t in db.types
             if map_label(t.name).id != t.cl_id]
    assert not wrong


def test_cl_ids_exist_and_parents_are_cl_ancestors(db, parser):
    for t in db.types:
        assert parser.is_valid_term_id(t.cl_id), f"{t.name}: {t.cl_id} not in CL"
        assert not parser.is_term_deprecated(t.cl_id), f"{t.name}: {t.cl_id} is obsolete"
        parent_id = db[t.parent].cl_id if t.parent in db else t.parent
        assert parser.is_valid_term_id(parent_id), f"{t.name}: parent {parent_id}"
        ancestors = set(parser.get_term_ancestors(t.cl_id))
        # a state without its own CL term (e.g. iCAF) carries its parent's term
        assert parent_id in ancestors or parent_id == t.cl_id, (
            f"{t.name} ({t.cl_id}): parent {t.parent} ({parent_id}) is not a CL ancestor")


def test_tree_is_acyclic_and_has_lineage_roots(db):
    roots = db.children(None)
    assert {"T cell", "B cell", "NK cell", "monocyte", "dendritic cell"} <= set(roots)
    for name in db.names:
        path = db.lineage(name)
        assert path[-1] == name and path[0] in roots and len(path) == len(set(path))


def test_markers_are_symbols_mostly_in_the_ranked_gene_list(db, gene_list_path):
    ranked = set(gene_list_path.read_text(encoding="utf-8").split())
    symbol = re.compile(r"^[A-Z0-9][A-Z0-9.\-]*[A-Z0-9]$|^[A-Z]$")
    genes = db.genes()
    bad = [g for g in genes if not symbol.match(g.upper()) or g != g.upper()
           and not re.match(r"^C\d+orf\d+$", g)]
    assert not bad, f"not HGNC-style: {bad}"
    inside = sum(g in ranked for g in genes) / len(genes)
    assert inside >= 0.85, f"only {inside:.0%} of markers are in the ranked gene list"
    for t in db.types:
        assert not set(t.positive) & set(t.negative), t.name
        assert all(0 < w <= 3 for w in [*t.positive.values(), *t.negative.values()])


def test_blood_restriction_keeps_blood_types_and_ancestors(db):
    blood = load_markers(tissue="blood")
    assert "hepatocyte" not in blood and "astrocyte" not in blood
    assert "fibroblast" not in blood and "alveolar macrophage" not in blood
    for name in ["naive B cell", "CD56-dim NK cell", "platelet", "classical monocyte"]:
        assert name in blood
    for name in blood.names:  # the tree stays whole
        assert all(a in blood for a in blood.lineage(name))
    liver = load_markers(tissue="liver")
    assert {"hepatocyte", "Kupffer cell", "fibroblast", "T cell"} <= set(liver.names)
    assert "podocyte" not in liver


def test_tissue_synonyms():
    assert load_markers(tissue="PBMC").names == load_markers(tissue="blood").names
    assert "enterocyte" in load_markers(tissue="small intestine")


def test_unknown_tissue_is_a_clear_error():
    with pytest.raises(InputError, match="Unknown tissue 'mars'.*blood"):
        load_markers(tissue="mars")


def test_user_file_adds_and_overrides(tmp_path):
    f = tmp_path / "mine.tsv"
    f.write_text(HEADER
                 + "my gut T cell\tCL:0000084\tT cell\tgut\tITGAE:3,CD3E\tKLF2\tlab notes\n"
                 + "hepatocyte\tCL:0000182\tCL:0000066\tliver\tALB:3,APOA1\t\tlab notes\n",
                 encoding="utf-8")
    db = load_markers(f)
    assert db["my gut T cell"].positive == {"ITGAE": 3.0, "CD3E": 1.0}
    assert db.parent_of("my gut T cell") == "T cell"
    assert db["hepatocyte"].positive == {"ALB": 3.0, "APOA1": 1.0}
    assert "naive B cell" in db  # merged, not replaced
    only = load_markers(_solo(tmp_path), replace=True)
    assert only.names == ["lymph", "my T"]


def _solo(tmp_path):
    f = tmp_path / "solo.tsv"
    f.write_text(HEADER + "lymph\tCL:0000542\tCL:0000738\tblood\tPTPRC\t\t\n"
                 "my T\tCL:0000084\tlymph\tblood\tCD3E:2\tMS4A1\t\n", encoding="utf-8")
    return f


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("x\tCL:0000084\tT cell\tblood\tCD3E:abc\t\t", r"line 2, column 'positive'.*abc"),
        ("x\tCL:0000084\tT cell\tblood\tCD3E:7\t\t", r"line 2, column 'positive'.*\(0, 3\]"),
        ("x\tCL84\tT cell\tblood\tCD3E\t\t", r"line 2, column 'cl_id'"),
        ("x\tCL:0000084\tT cell\tblood\t\t\t", r"line 2, column 'positive'.*at least one"),
        ("x\tCL:0000084\tT cell\tblood\tCD3E,CD3E\t\t", r"line 2.*listed twice"),
        ("x\tCL:0000084\tT cell\tblood\tCD3E\tCD3E\t", r"line 2.*both positive and negative"),
        ("x\tCL:0000084\tno such type\tblood\tCD3E\t\t", r"parent 'no such type'"),
        ("x\tCL:0000084\tT cell\tblood\tCD 3E\t\t", r"column 'positive'.*not a gene symbol"),
        ("x\tCL:0000084", r"line 2: has 2 fields"),
    ],
)
def test_bad_user_rows_name_line_and_column(tmp_path, row, match):
    f = tmp_path / "bad.tsv"
    f.write_text(HEADER + row + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=match):
        load_markers(f)


def test_bad_header_and_missing_file(tmp_path):
    f = tmp_path / "h.tsv"
    f.write_text("name\tcl\n", encoding="utf-8")
    with pytest.raises(InputError, match="header lacks column"):
        read_marker_file(f)
    with pytest.raises(InputError, match="not found"):
        load_markers(tmp_path / "nope.tsv")


def test_duplicate_type_in_one_file(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text(HEADER + "a\tCL:0000084\tCL:0000542\tblood\tCD3E\t\t\n"
                 "a\tCL:0000084\tCL:0000542\tblood\tCD3D\t\t\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 3.*already defined on line 2"):
        read_marker_file(f)


def test_builtin_file_ships_as_package_data():
    p = builtin_marker_path()
    assert p.is_file() and p.name == "markers.tsv"
