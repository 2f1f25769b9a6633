"""Conventions of the public API, in the spirit of scanpy's ``test_package_structure.py``.

- ``pp``/``tl``/``pl`` functions take the data first and every option keyword-only (the few
  positional arguments each allows are listed, with the reason);
- functions that write into an AnnData take ``key_added`` and ``copy``, and their docstring's
  Returns section names every ``obs``/``uns`` key they write;
- every public function has a numpydoc docstring with Parameters and Returns sections that
  document each of its parameters;
- no package module shadows a standard-library module in its own imports.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys

import pytest

import cellreasoner as cr

#: function -> the parameters it takes positionally (data first), and why the extra ones
POSITIONAL = {
    "pp.prepare": ("data", "output"),  # the input and the output file, as ``cellreasoner prepare``
    "pp.sentences": ("adata_or_source", "gene_list"),
    "pp.gene_activity": ("data",),  # scATAC-seq input -> gene activity (cr.read_atac)
    "tl.annotate": ("adata", "backend"),  # the model, as celltypist.annotate(adata, model)
    "tl.audit": ("adata", "labels"),  # the column audited, as ``cellreasoner audit --labels``
    "tl.annotate_markers": ("table", "backend"),  # as tl.annotate, a marker table for the data
    "tl.score": ("adata", "truth_key"),
    "tl.evaluate": ("results", "truth"),  # one or many runs
    "pl.label_counts": ("labels",),
    "pl.label_heatmap": ("data",),  # an EvaluationResult or an annotated AnnData
    "pl.level_bar": ("result",),
    "pl.score_violin": ("result",),
    "pl.umap": ("adata",),
}
#: functions that write into the AnnData -> the keys their Returns section must name
WRITES = {
    "tl.annotate": [f"_{f}" for f in ("label", "confidence", "ontology_id", "ontology_label",
                                      "reasoning", "response", "evidence_fraction",
                                      "evidence_flag", "cited_present", "cited_absent",
                                      "cluster_label", "cluster_agreement",
                                      "cluster_mixed", "agreement", "entropy",
                                      "label_<name>")] + ["uns[key_added]"],
    "tl.audit": [f"_{f}" for f in ("status", "supporting", "contradicting", "alternative",
                                   "label_score", "alternative_score")] + ["uns[key_added]"],
    "tl.score": ["key_added", "_level", "uns[key_added]"],
}


def _namespace_functions():
    for ns_name in ("pp", "tl", "pl"):
        ns = getattr(cr, ns_name)
        for name in ns.__all__:
            yield f"{ns_name}.{name}", getattr(ns, name)


FUNCTIONS = dict(_namespace_functions())


def test_every_namespace_function_is_listed_here():
    assert set(FUNCTIONS) == set(POSITIONAL)


@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_data_first_and_options_keyword_only(name):
    params = list(inspect.signature(FUNCTIONS[name]).parameters.values())
    allowed = POSITIONAL[name]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                       p.POSITIONAL_OR_KEYWORD)]
    assert tuple(positional) == allowed, f"{name}: positional {positional}, want {allowed}"
    rest = [p for p in params if p.name not in allowed]
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in rest), name


@pytest.mark.parametrize("name", sorted(WRITES))
def test_writers_take_key_added_and_copy_and_document_their_keys(name):
    func = FUNCTIONS[name]
    params = inspect.signature(func).parameters
    assert "key_added" in params and "copy" in params, name
    doc = inspect.getdoc(func)
    returns = doc.split("Returns\n-------", 1)[1]
    for key in WRITES[name]:
        assert key in returns, f"{name}: the Returns section does not name {key!r}"


def _documented(doc: str) -> set[str]:
    section = doc.split("Parameters\n----------", 1)[1].split("\n\n\n")[0]
    section = re.split(r"\n(?:Returns|Raises|Yields|Examples|Notes)\n-+", section)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line and not line.startswith(" "):
            names.update(n.strip().lstrip("*") for n in line.split(":")[0].split(","))
    return names


PUBLIC = {**FUNCTIONS, **{f"cr.{n}": getattr(cr, n) for n in cr.__all__
                          if inspect.isfunction(getattr(cr, n))}}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_numpydoc_documents_every_parameter(name):
    func = PUBLIC[name]
    doc = inspect.getdoc(func) or ""
    params = [p for p in inspect.signature(func).parameters.values()
              if p.kind is not p.VAR_POSITIONAL]
    if not params:
        return
    assert "Parameters\n----------" in doc, f"{name} has no Parameters section"
    assert "Returns\n-------" in doc, f"{name} has no Returns section"
    missing = {p.name for p in params} - _documented(doc)
    assert not missing, f"{name}: parameters not documented: {sorted(missing)}"


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    for info in pkgutil.walk_packages(cr.__path__, "cellreasoner."):
        leaf = info.name.rsplit(".", 1)[1]
        assert leaf not in stdlib or info.ispkg, f"{info.name} shadows the stdlib {leaf!r}"
    # a package named like a stdlib module must not hide it from its own modules
    io_pkg = importlib.import_module("cellreasoner.io")
    for info in pkgutil.iter_modules(io_pkg.__path__, "cellreasoner.io."):
        source = inspect.getsource(importlib.import_module(info.name))
        assert not re.search(r"^from \. import io\b|^import cellreasoner\.io as io\b", source,
                             re.M), info.name


def test_annotate_module_is_a_module():
    """``import cellreasoner.annotation as m`` gives the package, not the function."""
    m = importlib.import_module("cellreasoner.annotation")
    assert inspect.ismodule(m) and callable(m.annotate) and cr.annotate is m.annotate
