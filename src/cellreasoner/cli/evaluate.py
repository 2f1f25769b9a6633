"""``cellreasoner evaluate``: score annotation runs against ground truth, side by side."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="score annotation runs against ground-truth labels",
        description=(
            "Hierarchical score (1 subtype / .5 major / .25 partial / 0), subtype-level, "
            "exact-CL-term and major-level accuracy, macro-F1 on Cell Ontology terms and a "
            "per-label table, for one or many annotation runs (.h5ad or result CSV) compared "
            "side by side; how each truth label was read is printed."
        ),
    )
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="annotated .h5ad files or result CSVs")
    p.add_argument("--truth", required=True, metavar="COLUMN",
                   help="ground-truth column (obs column, or 'labels' in a result CSV)")
    p.add_argument("--pred", nargs="+", metavar="COLUMN",
                   help="prediction column(s); several compare columns of one file "
                        "(default: cellreasoner_label / label)")
    p.add_argument("--names", nargs="+", metavar="NAME",
                   help="run names, one per run (default: model from provenance, else file name)")
    p.add_argument("--pair-table", metavar="CSV",
                   help="judged (truth, prediction) pairs that override the automatic scorer")
    p.add_argument("--truth-map", metavar="TSV",
                   help="how to read truth labels: a TSV with columns truth and cl_id (e.g. "
                   "MDC -> CL:0000113); each label's reading is printed")
    p.add_argument("--pair-table-only", action="store_true",
                   help="score only the pairs in --pair-table (the upstream notebook's "
                   "semantics); the others are left unscored and the coverage is printed")
    p.add_argument("-o", "--outdir", metavar="OUTDIR",
                   help="write metrics.csv, per_label.csv, scores.csv, truth_readings.csv and "
                        "plots here")
    p.add_argument("--format", choices=("png", "pdf", "svg"), default="png",
                   help="figure format in OUTDIR (default: png)")
    p.add_argument("--no-plots", action="store_true", help="write tables only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the outputs (checked, locked) before any work, then run."""
    from ._outputs import evaluate_outputs

    with evaluate_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Evaluate, print the summary table, optionally write OUTDIR."""
    import pandas as pd

    from ..evaluation import evaluate
    from ..evaluation._result import SHOWN_SUMMARY_COLUMNS, TABLE_FILES

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # seaborn's category-unit chatter

    result = evaluate(args.results, truth=args.truth, pred=args.pred, names=args.names,
                      pair_table=args.pair_table, pair_table_only=args.pair_table_only,
                      truth_map=args.truth_map)
    for note in result.notes:
        print(note, file=sys.stderr)
    cols = [*SHOWN_SUMMARY_COLUMNS,
            "subtype_correct", "major_correct", "partially_correct", "incorrect"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.outdir:
        out = result.to_dir(args.outdir, plots=not args.no_plots, fmt=args.format)
        print(f"wrote {out}/{', '.join(TABLE_FILES)}"
              + ("" if args.no_plots else " and plots"), file=sys.stderr)
    return 0
