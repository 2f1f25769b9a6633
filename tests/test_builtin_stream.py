"""The builtin backend streams blocks and checks its own evidence exactly like the engine did.

The engine used to re-parse the builtin's traces with ``check_evidence_many`` against each
cell's sentence genes (``build_sentences(source, gene_list, max_genes)``, vocabulary = gene
list + var names). The backend now returns those columns itself; here both are computed on the
same traces and must agree in every cell: pbmc68k (with and without a kNN graph), the tumour
data, and synthetic cells with more than 1,000 expressed listed genes (truncated sentences).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellreasoner.backends import get_backend
from cellreasoner.backends.base import CellAnswers, RunContext
from cellreasoner.backends.builtin import BuiltinBackend
from cellreasoner.backends.builtin._stream import EvidenceSpec
from cellreasoner.backends.builtin.reasoner import Reasoner
from cellreasoner.evidence import check_evidence_many
from cellreasoner.matrix import from_matrix
from cellreasoner.prompts import Prompt, SamplingParams, instruction_for
from cellreasoner.resources import load_gene_list
from cellreasoner.sentences import build_sentences


@pytest.fixture(scope="module")
def ranked(shared_data):
    return load_gene_list(shared_data / "ranked_hvg.list")


def _old_evidence(traces, source, gene_list, max_genes=1000):
    """The engine's check before the redesign (annotate._cell_table)."""
    sentences = build_sentences(source, gene_list, max_genes=max_genes)
    vocabulary = list(dict.fromkeys([*gene_list, *map(str, source.var_names)]))
    ev = check_evidence_many(traces, [sentences.cell_genes(i) for i in range(len(traces))],
                             vocabulary=vocabulary)
    some = ev["n_cited"].to_numpy() > 0
    return (np.where(some, ev["fraction_present"].to_numpy(), np.nan),
            some & ev["flagged"].to_numpy(dtype=bool),
            np.where(some, ev["present"].to_numpy(dtype=object), ""),
            np.where(some, ev["absent"].to_numpy(dtype=object), ""))


def _stream(reasoner, X, genes, conn, gene_list, max_genes=1000, chunk_size=20_000):
    blocks = list(reasoner.iter_blocks(from_matrix(X, genes), conn, chunk_size=chunk_size,
                                       evidence=EvidenceSpec(tuple(gene_list), max_genes)))
    assert [b.start for b in blocks] == list(range(0, X.shape[0], chunk_size))
    traces = [t for b in blocks for t in b.result.reasoning]
    ev = tuple(np.concatenate([b.evidence[k] for b in blocks]) for k in range(4))
    return blocks, traces, ev


def _assert_same(new, old):
    frac, flag, present, absent = new
    want_frac, want_flag, want_present, want_absent = old
    same = (frac == want_frac) | (np.isnan(frac) & np.isnan(want_frac))
    assert same.all(), np.flatnonzero(~same)[:5]
    assert (flag == want_flag).all()
    assert list(present) == list(want_present)
    assert list(absent) == list(want_absent)


def _synthetic(n_cells=300, n_genes=3000, seed=0):
    """Cells expressing > 1,000 genes of the ranked list, markers of one type each on top."""
    rng = np.random.default_rng(seed)
    r = Reasoner(refine=False)
    genes = list(dict.fromkeys([*r.genes, *load_gene_list()]))[:n_genes]
    X = (rng.random((n_cells, n_genes)) < 0.45).astype(np.float32)
    col = {g: j for j, g in enumerate(genes)}
    for i, t in enumerate(rng.choice(np.flatnonzero(~r.has_children), n_cells)):
        while t >= 0:
            cols = [col[r.genes[m]] for m in np.flatnonzero(r.P[t] > 0) if r.genes[m] in col]
            X[i, cols] = (rng.random(len(cols)) < 0.7)
            t = r.parent[t]
    X *= rng.uniform(0.3, 3.0, X.shape).astype(np.float32)
    return sp.csr_matrix(X), genes


@pytest.mark.parametrize("knn", [False, True])
def test_evidence_equals_engine_check_pbmc68k(_pbmc68k_cached, ranked, knn):
    raw = _pbmc68k_cached.raw.to_adata()
    X, genes = sp.csr_matrix(raw.X), list(map(str, raw.var_names))
    conn = _pbmc68k_cached.obsp["connectivities"] if knn else None
    _, traces, ev = _stream(Reasoner(), X, genes, conn, ranked)
    _assert_same(ev, _old_evidence(traces, from_matrix(X, genes), ranked))
    assert np.isfinite(ev[0]).mean() > 0.9


def test_evidence_equals_engine_check_tumour(shared_data, ranked):
    import anndata as ad

    t = ad.read_h5ad(shared_data / "tumour_immune_1000.h5ad")
    genes = list(map(str, t.var_names))
    conn = t.obsp.get("connectivities")
    for graph in (None, conn):
        _, traces, ev = _stream(Reasoner(), t.X, genes, graph, ranked)
        _assert_same(ev, _old_evidence(traces, from_matrix(t.X, genes), ranked))


def test_evidence_equals_engine_check_truncated_sentences(ranked):
    X, genes = _synthetic()
    source = from_matrix(X, genes)
    listed = set(ranked)
    expressed_listed = np.asarray(X[:, [j for j, g in enumerate(genes) if g in listed]]
                                  .getnnz(axis=1))
    assert (expressed_listed > 1000).mean() > 0.9  # the sentences are cut
    rng = np.random.default_rng(1)
    nb = rng.integers(0, X.shape[0], (X.shape[0], 8))
    W = sp.csr_matrix((np.ones(nb.size, np.float32), (np.repeat(np.arange(X.shape[0]), 8),
                                                      nb.ravel())), shape=(X.shape[0],) * 2)
    for conn in (None, W):
        _, traces, ev = _stream(Reasoner(), X, genes, conn, ranked, chunk_size=128)
        _assert_same(ev, _old_evidence(traces, source, ranked))
        # truncation matters: with uncut sentences some verdicts differ
        uncut = _stream(Reasoner(), X, genes, conn, ranked, max_genes=10**6)[2]
        assert (uncut[3] != ev[3]).any()
        _assert_same(uncut, _old_evidence(traces, source, ranked, max_genes=10**6))


def test_blocks_equal_whole_matrix(_pbmc68k_cached):
    """Small blocks give the answers of one block (refinement and kNN included)."""
    raw = _pbmc68k_cached.raw.to_adata()
    X, genes = sp.csr_matrix(raw.X), list(map(str, raw.var_names))
    conn = _pbmc68k_cached.obsp["connectivities"]
    r = Reasoner()
    whole = r.annotate_matrix(X, genes, connectivities=conn)
    blocks = list(r.iter_blocks(from_matrix(X, genes), conn, chunk_size=97))
    assert len(blocks) == 8
    assert [t for b in blocks for t in b.result.reasoning] == whole.reasoning
    assert (np.concatenate([b.result.confidence for b in blocks]) == whole.confidence).all()
    assert (np.vstack([b.result.scores for b in blocks]) == whole.scores).all()


def test_configured_object_behaves_like_the_name(_pbmc68k_cached, ranked):
    raw = _pbmc68k_cached.raw.to_adata()
    source = from_matrix(sp.csr_matrix(raw.X), list(raw.var_names))
    named = get_backend("builtin", tissue="blood", gene_list=ranked, max_genes=200)
    obj = BuiltinBackend()
    obj.configure(RunContext(tuple(ranked), max_genes=200, tissue="blood"))
    assert obj.describe() == named.describe() and obj.model == named.model
    a, b = list(named.annotate_matrix(source)), list(obj.annotate_matrix(source))
    assert all(isinstance(x, CellAnswers) for x in a)
    for x, y in zip(a, b, strict=True):
        for f in ("label", "reasoning", "cited_present", "cited_absent", "evidence_flag"):
            assert list(getattr(x, f)) == list(getattr(y, f))
    # the constructor's own settings win over the run's
    own = BuiltinBackend(tissue="liver", max_genes=50)
    own.configure(RunContext(tuple(ranked), max_genes=200, tissue="blood"))
    assert own.tissue == "liver" and own.max_genes == 50


def test_generate_reports_each_prompt(ranked):
    be = BuiltinBackend(gene_list=ranked)
    prompts = [Prompt(instruction_for(False), s) for s in ("CD3E, CD3D, CD8A, CD8B", "MS4A1")]
    seen = []
    ticks = []
    out = be.generate(prompts, SamplingParams(n=2), progress=ticks.append,
                      on_result=lambda i, gens: seen.append((i, len(gens))))
    assert seen == [(0, 2), (1, 2)] and sum(ticks) == 2 and len(out) == 2


def _sample_of(hard_rows, X, chunk, max_cells, order=None):
    """The training sample of decisive steps ``hard_rows`` (cell, parent, child) over ``X``
    taken ``chunk`` cells at a time, the chunks merged in ``order``."""
    from cellreasoner.backends.builtin.refine import HardSteps, TrainingSample

    starts = list(range(0, X.shape[0], chunk))
    pool = TrainingSample(max_cells)
    for i in (order if order is not None else range(len(starts))):
        lo, hi = starts[i], min(starts[i] + chunk, X.shape[0])
        sel = (hard_rows[:, 0] >= lo) & (hard_rows[:, 0] < hi)
        h = HardSteps()
        h.add(*(hard_rows[sel, k] for k in range(3)))
        pool.merge(TrainingSample.from_chunk(h, X[lo:hi], lo, max_cells))
    return pool


def test_training_sample_is_the_same_whatever_the_chunking():
    """The refinement's training sample, gathered chunk by chunk during pass one, is one
    seeded sample of the whole matrix: the same cells (and rows) for any chunk size or
    arrival order; every cell of a step with at most ``max_cells`` of them; counts exact."""
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    n = 5000
    X = sp.random(n, 50, density=0.1, format="csr", random_state=2, dtype=np.float32)
    cells = np.arange(n)
    parent = np.where(cells % 3 == 0, 7, 9)
    child = np.where(parent == 7, 100 + cells % 2, 200 + (cells % 5 == 0))
    few = cells[(parent == 9) & (child == 201)][:40]  # a rare child: all of its cells train
    keep = (child != 201) | np.isin(cells, few)
    rows = np.column_stack([cells, parent, child])[keep]
    whole = _sample_of(rows, X, n, 300).plan(min_cells=10)
    for chunk in (333, 1024):
        order = rng.permutation(-(-n // chunk))
        pool = _sample_of(rows, X, chunk, 300, order)
        plan = pool.plan(min_cells=10)
        assert [p for p, _, _ in plan.steps] == [p for p, _, _ in whole.steps] == [7, 9]
        for (_, r1, y1), (_, r0, y0) in zip(plan.steps, whole.steps, strict=True):
            np.testing.assert_array_equal(r1, r0)
            np.testing.assert_array_equal(y1, y0)
        expr = pool.expression()
        got = expr(plan.steps[1][1])
        assert (got != X[plan.steps[1][1]]).nnz == 0
        assert pool.counts[(9, 201)] == 40 and pool.counts[(7, 100)] == len(
            cells[(parent == 7) & (child == 100)])
    _, r9, y9 = whole.steps[1]
    np.testing.assert_array_equal(np.sort(r9[y9 == 201]), few)  # 40 <= 300: all of them
    assert (y9 == 200).sum() == 300  # capped, drawn from all of the child's cells
    assert r9[y9 == 200].max() > 0.8 * n and r9[y9 == 200].min() < 0.2 * n


def test_pass_one_reads_spaced_windows_of_large_data():
    """Up to ``refine_sample_from`` cells (or with kNN smoothing, which needs every cell's
    scores) pass one sees every cell in the engine's chunks; of larger data, 20 evenly spaced
    windows adding up to about that many cells, the same rows for any chunk size."""
    from cellreasoner.backends.builtin._stream import pass_one_spans

    r = Reasoner(refine_sample_from=3_000)
    small = pass_one_spans(r, 2_500, None, 1_000)
    assert small == [(0, 1_000), (1_000, 2_000), (2_000, 2_500)]
    graph = sp.identity(12_000, format="csr")
    assert pass_one_spans(r, 12_000, graph, 2_000) == [(lo, lo + 2_000)
                                                        for lo in range(0, 12_000, 2_000)]
    spans = pass_one_spans(r, 12_000, None, 2_000)
    assert spans == pass_one_spans(r, 12_000, None, 777)  # whatever the engine's chunk
    assert len(spans) == 20 and spans[0] == (0, 150)
    assert {hi - lo for lo, hi in spans} == {150}
    assert {b[0] - a[0] for a, b in zip(spans, spans[1:], strict=False)} == {600}  # every 4th
    assert spans[-1] == (11_400, 11_550)  # spread over the whole file
    assert pass_one_spans(r, 12_001, None, 2_000)[-1] == (12_000, 12_001)  # a short last one
    assert pass_one_spans(Reasoner(refine=False), 12_000, None, 2_000) == []
    assert len(pass_one_spans(Reasoner(refine_sample_from=None), 12_000, None, 2_000)) == 6
    with pytest.raises(Exception, match="refine_sample_from=0"):
        Reasoner(refine_sample_from=0)


@pytest.mark.parametrize("on_file", [False, True])
def test_spans_are_the_rows_they_name(tmp_path, on_file):
    """:meth:`MatrixSource.iter_spans`: each span's rows exactly, whether read from the file
    or cut from in-memory chunks (spans crossing chunk borders are stacked)."""
    import anndata as ad

    from cellreasoner.matrix import from_h5ad

    X = sp.random(1_000, 30, density=0.2, format="csr", random_state=4, dtype=np.float32)
    genes = [f"G{i}" for i in range(30)]
    if on_file:
        path = tmp_path / "x.h5ad"
        a = ad.AnnData(X)
        a.var_names = genes
        a.write_h5ad(path)
        source = from_h5ad(path)
    else:
        source = from_matrix(X, genes)
    spans = [(0, 150), (140 + 10, 150 + 10), (300, 450), (990, 1_200)]
    got = list(source.iter_spans(spans))
    assert [lo for lo, _ in got] == [0, 150, 300, 990]
    for (lo, rows), (_, hi) in zip(got, spans, strict=True):
        want = X[lo:min(hi, 1_000)]
        assert rows.shape == want.shape and (rows != want).nnz == 0


def test_packed_answers_give_back_the_same_answers():
    """:meth:`CellAnswers.pack` (what workers send and the writer holds): unpacked, every
    column equal, value for value and dtype for dtype; equal strings one object; a column
    that is not all ``str`` kept as it is; an empty block stays empty."""
    rng = np.random.default_rng(3)
    n = 500
    traces = np.array(["CD3E present → T cell", "no CD3E, MS4A1 → B cell", "", "é\u2192\U0001f9ec",
                       "lone \udc80 surrogate"], dtype=object)
    picks = traces[rng.integers(0, len(traces), n)]
    labels = np.array(["T cell", "B cell"], dtype=object)[rng.integers(0, 2, n)]
    mixed = labels.copy()
    mixed[::7] = None
    a = CellAnswers(label=labels, confidence=rng.random(n).astype(np.float32),
                    ontology_id=labels.copy(), ontology_label=mixed, reasoning=picks,
                    evidence_fraction=np.where(rng.random(n) < 0.2, np.nan, rng.random(n)),
                    evidence_flag=rng.random(n) < 0.5, cited_present=picks.copy(),
                    cited_absent=np.full(n, "", dtype=object))
    packed = a.pack()
    assert len(packed) == n and "reasoning" in packed.text and "ontology_label" not in packed.text
    b = __import__("pickle").loads(__import__("pickle").dumps(packed)).unpack()
    for f in CellAnswers.__dataclass_fields__:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and len(x) == len(y), f
        assert [str(v) for v in x] == [str(v) for v in y], f
    assert len({id(v) for v in b.reasoning}) == len(set(picks))
    empty = CellAnswers(**{f: getattr(a, f)[:0] for f in CellAnswers.__dataclass_fields__})
    back = empty.pack().unpack()
    assert len(back) == 0 and back.reasoning.dtype == object


def test_cell_names_read_in_steps(tmp_path):
    """Cell names are read a step at a time (bounded memory): the same names, in order,
    across step borders, for string and numeric indices."""
    import h5py

    from cellreasoner.matrix import _h5_strings

    names = [f"cell_{i}" * (1 + i % 3) for i in range(2_345)]
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["s"] = np.array(names, dtype="S")
        f["o"] = np.array(names, dtype=h5py.string_dtype())
        f["i"] = np.arange(2_345)
        for key in ("s", "o"):
            assert _h5_strings(f[key], step=1_000).tolist() == names
        assert _h5_strings(f["i"], step=1_000).tolist() == [str(i) for i in range(2_345)]
    assert _h5_strings(np.array([b"a", b"b"])).tolist() == ["a", "b"]
