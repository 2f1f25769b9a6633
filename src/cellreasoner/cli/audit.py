"""``cellreasoner audit``: check labels someone already assigned against each cell's markers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` subcommand."""
    p = sub.add_parser(
        "audit",
        help="audit existing cell-type labels against each cell's own marker expression",
        description="Map each label of an obs column to the Cell Ontology and check every "
        "cell's expression against the label's markers and the best alternative (the built-in "
        "knowledge base): audit_status is consistent, contradicted or unsupported, with the "
        "markers for and against and what a contradicted cell looks like instead.",
    )
    p.add_argument("input", help=".h5ad, Seurat .rds, 10x, CSV/TSV or a demo name "
                   "(pbmc68k_reduced, pbmc_demo)")
    p.add_argument("--labels", required=True, metavar="COLUMN",
                   help="obs column with the labels to audit")
    p.add_argument("-o", "--output", help="output .h5ad (the input with audit_* obs columns) "
                   "or .csv (the per-cell audit table)")
    p.add_argument("--summary", metavar="CSV", help="per-label summary table (cells "
                   "contradicting their label and what they look like instead)")
    p.add_argument("--report", metavar="HTML", help="also write the offline HTML report "
                   "with its audit section")
    p.add_argument("--tissue", help="restrict the knowledge base to a tissue (e.g. blood)")
    p.add_argument("--markers", help="your own marker knowledge-base file, merged into the "
                   "built-in one")
    p.add_argument("--layer", help="layer to read instead of X")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw")
    p.add_argument("--margin", type=float, default=0.2,
                   help="how much the alternative must beat the label (default 0.2)")
    p.add_argument("--key-added", default="audit", help="obs column prefix (default audit)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the outputs (checked, locked) before any work, then run."""
    from ._outputs import audit_outputs

    with audit_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..annotation.output import write_csv, write_h5ad
    from ..audit import STATUSES, audit
    from ..errors import InputError

    if not (args.output or args.summary or args.report):
        raise InputError("audit: name an output: -o OUT.h5ad / OUT.csv, --summary CSV or "
                         "--report HTML.")
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix.lower() not in (".h5ad", ".csv"):
        raise InputError(f"Output {out}: use a .h5ad (audited AnnData) or .csv (per-cell "
                         "table) path.")
    if args.summary and Path(args.summary).suffix.lower() != ".csv":
        raise InputError(f"--summary {args.summary}: use a .csv path.")
    if args.report and Path(args.report).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--report {args.report}: use an .html path.")
    result = audit(args.input, args.labels, layer=args.layer, use_raw=args.use_raw,
                   tissue=args.tissue, markers=args.markers, margin=args.margin,
                   key_added=args.key_added)
    written = []
    if out is not None:
        if out.suffix.lower() == ".csv":
            written.append(write_csv(result.cells.reset_index(), out))
        else:
            written.append(write_h5ad(result.adata, out))
    if args.summary:
        written.append(result.to_csv(args.summary))
    if args.report:
        from ..report import write_report

        written.append(write_report(result.adata, args.report, pred=args.labels))
    counts = result.cells["status"].value_counts()
    print(f"{len(result.cells):,} cells: "
          + ", ".join(f"{int(counts.get(s, 0)):,} {s}" for s in STATUSES), file=sys.stderr)
    worst = result.summary[result.summary["contradicted"] > 0].head(5)
    for row in worst.itertuples():
        print(f"  {row.label}: {row.contradicted} of {row.n_cells} contradicted"
              + (f", look like {row.looks_like}" if row.looks_like else ""), file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
