"""Evidence-check throughput (traces/s): the straightforward implementation vs the fast path.

Usage (from the project root; needs ../shared for the ranked gene list, or
$CELLREASONER_GENE_LIST)::

    python bench/evidence.py [--copies 30] [--repeats 3]

Real builtin traces: ``Reasoner().annotate_matrix`` on scanpy's pbmc68k_reduced (700 PBMCs,
log-normalised ``.raw``) and the cells' sentences built with the ranked gene list, tiled
``--copies`` times (21,000 cells by default) with every trace and sentence a separate string
object, as ``annotate()`` produces them. The vocabulary is annotate's (gene list + var_names).

Rows:

* ``check_evidence_many`` with sentence strings (what ``annotate._cell_table`` passes today)
  and with gene lists (``CellSentences.cell_genes(i)``, no join/split);
* the same on the 700 cells once (little repetition: 522 distinct traces, 700 distinct
  sentences), the regime of real data where most cells differ;
* ``check_evidence`` called per cell (2,000 calls, vocabulary list given each time).

"before" is ``reference_check_evidence[_many]`` of ``tests/evidence_reference.py`` (one full
check per trace, vocabulary rebuilt per call), "after" the public functions; every row also
checks the two give identical results. Times are the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

_table = functools.partial(table, align="auto")  # the shared bench table




def _fresh(text: str) -> str:
    """A copy of ``text`` as a new object (hash not cached), like per-cell strings."""
    return text[:1] + text[1:]


def best(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=30, help="tiles of the 700 cells (30)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row, best kept (3)")
    ap.add_argument("--single", type=int, default=2000, help="check_evidence calls (2000)")
    args = ap.parse_args()
    use_shared_gene_list()

    import pandas as pd

    sys.path.insert(0, str(ROOT / "tests"))  # the reference implementation lives there
    import evidence_reference as ref_ev

    from cellreasoner import evidence as ev
    from cellreasoner.backends.builtin.reasoner import Reasoner
    from cellreasoner.datasets import pbmc68k_reduced
    from cellreasoner.resources import load_gene_list
    from cellreasoner.sentences import build_sentences

    adata = pbmc68k_reduced()
    var_names = [str(g) for g in adata.var_names]
    genes = load_gene_list()
    vocabulary = list(dict.fromkeys([*genes, *var_names]))
    traces = Reasoner().annotate_matrix(adata.X, var_names).reasoning
    sents = build_sentences(adata, genes)
    n0 = len(traces)

    def inputs(copies: int, as_lists: bool):
        reasonings = [_fresh(traces[i]) for _ in range(copies) for i in range(n0)]
        cells = [sents.cell_genes(i) if as_lists else sents.sentence(i)
                 for _ in range(copies) for i in range(n0)]
        return reasonings, cells

    rows = []
    cases = [(f"many, strings, x{args.copies}", args.copies, False),
             (f"many, gene lists, x{args.copies}", args.copies, True),
             ("many, strings, x1", 1, False),
             ("many, gene lists, x1", 1, True)]
    for label, copies, as_lists in cases:
        r, s = inputs(copies, as_lists)
        t_ref, ref = best(lambda r=r, s=s: ref_ev.reference_check_evidence_many(r, s, vocabulary),
                          args.repeats)
        t_new, new = best(lambda r=r, s=s: ev.check_evidence_many(r, s, vocabulary),
                          args.repeats)
        pd.testing.assert_frame_equal(new, ref)
        rows.append({"case": label, "traces": len(r), "distinct traces": len(set(r)),
                     "before traces/s": f"{len(r) / t_ref:,.0f}",
                     "after traces/s": f"{len(r) / t_new:,.0f}",
                     "speed-up": f"{t_ref / t_new:.1f}x", "identical": "yes"})

    k = min(args.single, n0)
    r, s = inputs(-(-k // n0), False)
    r, s = r[:k], s[:k]
    t_ref, ref = best(lambda: [ref_ev.reference_check_evidence(a, b, vocabulary)
                               for a, b in zip(r, s, strict=True)], args.repeats)
    t_new, new = best(lambda: [ev.check_evidence(a, b, vocabulary)
                               for a, b in zip(r, s, strict=True)], args.repeats)
    assert new == ref
    rows.append({"case": "check_evidence per cell", "traces": k, "distinct traces": len(set(r)),
                 "before traces/s": f"{k / t_ref:,.0f}", "after traces/s": f"{k / t_new:,.0f}",
                 "speed-up": f"{t_ref / t_new:.1f}x", "identical": "yes"})
    print(_table(rows, ["case", "traces", "distinct traces", "before traces/s",
                        "after traces/s", "speed-up", "identical"]))


if __name__ == "__main__":
    main()
