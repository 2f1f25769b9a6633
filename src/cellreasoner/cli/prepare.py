"""``cellreasoner prepare``: build cell sentences / upstream prompt files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build CellReasoner cell sentences and prompt files",
        description="Build cell sentences (the cell's expressed genes in the ranked gene-list "
        "order) and write them as the upstream CellReasoner JSON, JSONL, or compact Parquet.",
    )
    p.add_argument("input", help=".h5ad, Seurat .rds, 10x .h5 / matrix directory, CSV/TSV, or "
                   "the demo names pbmc68k_reduced / pbmc_demo")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .json (upstream), .jsonl, or compact .arrow / .parquet")
    p.add_argument("--gene-list", help="ranked gene list file (default: the published list, "
                   "downloaded once with a pinned hash)")
    p.add_argument("--order", choices=["ranked", "expression"], default="ranked",
                   help="gene order: ranked list (upstream, default) or the cell's expression")
    p.add_argument("--max-genes", type=int, default=1000, help="genes per sentence (1000)")
    p.add_argument("--label-column", help="obs column with ground-truth labels (JSON 'output')")
    p.add_argument("--reasoning", action="store_true",
                   help="use the reasoning-mode instruction (<think></think>)")
    p.add_argument("--layer", help="layer to read instead of X")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw")
    p.add_argument("--assay", help="Seurat assay (default: the active assay; upstream: "
                   "integrated, else RNA, as upstream CellReasoner)")
    p.add_argument("--species", choices=["auto", "human", "mouse"], default="auto",
                   help="auto (default): read from the gene symbols' case; mouse data is "
                   "ordered by the published list's one-to-one orthologs and keeps its own "
                   "symbols in the sentences")
    p.add_argument("--chunk-size", type=int, default=8192, help="cells per chunk (8192)")
    p.add_argument("--allow-empty", action="store_true",
                   help="keep cells without any expressed list gene")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the outputs (checked, locked) before any work, then run."""
    from ._outputs import prepare_outputs

    with prepare_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..progress import progress_bar
    from ..sentences.prepare import prepare

    console = Console(stderr=True)
    # prepare opens (and streams) the input itself, so the cell count is not known up front
    with progress_bar("preparing", total=None, unit="cells") as advance:
        _, summary = prepare(
            args.input, args.output, assay=args.assay, gene_list=args.gene_list, order=args.order,
            max_genes=args.max_genes, label_key=args.label_column, reasoning=args.reasoning,
            layer=args.layer, use_raw=args.use_raw, chunk_size=args.chunk_size,
            allow_empty=args.allow_empty, species=args.species, progress=advance,
        )
    console.print(summary.line())
    return 0
