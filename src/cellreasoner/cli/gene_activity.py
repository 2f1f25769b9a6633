"""``cellreasoner gene-activity``: scATAC-seq input -> a gene-activity .h5ad to annotate."""

from __future__ import annotations

import argparse
import sys


def add_atac_options(p: argparse.ArgumentParser) -> None:
    """The options of an ATAC input (shared with ``annotate``)."""
    p.add_argument("--gtf", help="ATAC input: gene annotation, GTF or GFF3 (default: "
                   "$CELLREASONER_GTF, else GENCODE basic in the cache)")
    p.add_argument("--barcodes", help="fragment file: the cells (one barcode a line, or Cell "
                   "Ranger's singlecell.csv / per_barcode_metrics.csv; default: the cell table "
                   "beside the fragment file)")


def register(sub: argparse._SubParsersAction) -> None:
    from ..atac.genes import UPSTREAM

    p = sub.add_parser(
        "gene-activity",
        help="scATAC-seq -> gene activity .h5ad (fragments, peak matrix, .h5mu, snapATAC2)",
        description="Compute gene activity (Signac's definition: fragments overlapping the "
        "gene body + 2 kb upstream of the TSS, strand-aware) from a 10x fragment file "
        "(streamed), a peak matrix, a MuData .h5mu or a snapATAC2 .h5ad; an existing "
        "gene-activity matrix is used as is. Writes an .h5ad (X = log1p counts per 10k, "
        "layers['counts']) that `cellreasoner annotate` reads as ATAC.",
    )
    p.add_argument("input", help="fragments.tsv.gz, filtered_peak_bc_matrix(.h5), peak or "
                   "gene-activity .h5ad, .h5mu")
    p.add_argument("-o", "--output", required=True, help="output .h5ad")
    add_atac_options(p)
    p.add_argument("--upstream", type=int, default=UPSTREAM,
                   help=f"bases added upstream of the TSS ({UPSTREAM})")
    p.add_argument("--all-biotypes", action="store_true",
                   help="count every gene of the annotation (default: protein-coding)")
    p.add_argument("--method", choices=["native", "snapatac2"], default="native",
                   help="native (default) or snapatac2 (snap.pp.make_gene_matrix, extra "
                   "[atac])")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the output (checked, locked) before any work, then run."""
    from ._outputs import gene_activity_outputs

    with gene_activity_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..annotation.output import write_h5ad
    from ..atac import read_atac
    from ..atac.genes import BIOTYPES
    from ..errors import InputError
    from ..io import UNS_KEY
    from ..progress import progress_bar

    out = Path(args.output)
    if out.suffix.lower() != ".h5ad":
        raise InputError(f"Output {out}: gene activity is written as .h5ad.")
    with progress_bar("reading fragments", total=None, unit="lines") as advance:
        adata = read_atac(args.input, gtf=args.gtf, barcodes=args.barcodes,
                          upstream=args.upstream,
                          biotypes=None if args.all_biotypes else BIOTYPES,
                          method=args.method, progress=advance)
    write_h5ad(adata, out)
    info = adata.uns[UNS_KEY]
    print(f"{adata.n_obs} cells x {adata.n_vars} genes of gene activity "
          f"({info.get('gene_activity', '')}); X = {info.get('normalisation', '')}",
          file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0
