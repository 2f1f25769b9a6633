"""``cellreasoner report``: a self-contained offline HTML report of one annotation run."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (summary, plots, reasoning browser)",
        description=(
            "One HTML file that opens offline: run summary and provenance, metrics and plots "
            "when --truth is given, and a searchable browser of clusters and cells with the "
            "model's reasoning (cited genes marked expressed / not expressed)."
        ),
    )
    p.add_argument("results", metavar="RESULTS", help="annotated .h5ad or result CSV")
    p.add_argument("-o", "--output", required=True, metavar="HTML", help="output .html file")
    p.add_argument("--truth", metavar="COLUMN", help="ground-truth column (adds metrics)")
    p.add_argument("--pred", metavar="COLUMN",
                   help="prediction column (default: cellreasoner_label / label)")
    p.add_argument("--groupby", metavar="COLUMN", help="cluster column for the cluster browser")
    p.add_argument("--title", help="page title (default: from the model name)")
    p.add_argument("--pair-table", metavar="CSV",
                   help="judged (truth, prediction) pairs that override the automatic scorer")
    p.add_argument("--truth-map", metavar="TSV",
                   help="how to read truth labels: a TSV with columns truth and cl_id (e.g. "
                   "MDC -> CL:0000113); the report shows each label's reading")
    p.add_argument("--max-cells", type=int, default=None, metavar="N",
                   help="cells embedded in the browser; larger runs are subsampled, stratified "
                        "by label (default: 20000)")
    p.add_argument("--no-plots", action="store_true", help="leave the plots out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the outputs (checked, locked) before any work, then run."""
    from ._outputs import report_outputs

    with report_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Write the report and print its path."""
    from ..errors import InputError
    from ..report import DEFAULT_MAX_CELLS, write_report

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # seaborn's category-unit chatter

    max_cells = DEFAULT_MAX_CELLS if args.max_cells is None else args.max_cells
    if max_cells < 1:
        raise InputError("--max-cells must be at least 1")
    path = write_report(args.results, args.output, truth=args.truth, pred=args.pred,
                        groupby=args.groupby, title=args.title, pair_table=args.pair_table,
                        max_cells=max_cells, plots=not args.no_plots,
                        truth_map=args.truth_map)
    print(f"wrote {path}", file=sys.stderr)
    return 0
