"""``cellreasoner annotate-markers``: name the clusters of a marker table, one CSV row each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..markers.prompting import MARKER_PROMPT_STYLES
    from ..markers.table import DEFAULT_MAX_PADJ, DEFAULT_MIN_LOGFC, LAYOUTS
    from .annotate import add_backend_arguments

    p = sub.add_parser(
        "annotate-markers",
        help="name the clusters of a marker table (FindAllMarkers, rank_genes_groups, lists)",
        description="Name every cluster of a marker table with a cell type, a CL term, a "
        "confidence, the reasoning and the supporting markers (one CSV row per cluster).",
    )
    p.add_argument("table", help="Seurat FindAllMarkers CSV, sc.get.rank_genes_groups_df CSV, "
                   ".h5ad with a rank_genes_groups result, 'cluster<TAB>gene1,gene2' lines, "
                   "or JSON {cluster: [genes]}")
    p.add_argument("-o", "--output", required=True, help="output .csv (one row per cluster)")
    add_backend_arguments(p, "cluster")
    p.add_argument("--tissue", help="tissue of the cells (restricts the built-in knowledge; "
                   "named in model prompts)")
    p.add_argument("--species", default="human", choices=["human", "mouse"],
                   help="species (default human): which rows of --markers databases count")
    p.add_argument("--markers", action="append", metavar="FILE",
                   help="extra marker knowledge merged into the built-in one: the built-in "
                   "TSV format, a CellMarker 2.0 table or a PanglaoDB TSV/xlsx (repeatable)")
    p.add_argument("--top", type=int, help="markers per cluster (default 50 builtin, 10 "
                   "gptcelltype, 100/30 CellReasoner/neutral prompts)")
    p.add_argument("--max-padj", type=float, default=DEFAULT_MAX_PADJ,
                   help=f"keep markers with adjusted p <= this (default {DEFAULT_MAX_PADJ})")
    p.add_argument("--min-logfc", type=float, default=DEFAULT_MIN_LOGFC,
                   help=f"keep markers with log2 fold change >= this (default "
                   f"{DEFAULT_MIN_LOGFC})")
    p.add_argument("--check-labels", action="store_true",
                   help="cluster names are cell-type labels: add label_check (agrees / "
                   "disagrees / uncertain) and label_check_reason")
    p.add_argument("--label-map", metavar="TSV", help="with --check-labels: how to read the "
                   "names as CL terms (columns truth, cl_id)")
    p.add_argument("--prompt-style", choices=list(MARKER_PROMPT_STYLES), default="auto",
                   help="model backends: auto (default), cellreasoner, neutral, gptcelltype")
    p.add_argument("--clusters-per-call", type=int, default=1,
                   help="clusters asked in one prompt (default 1)")
    p.add_argument("--reasoning", action="store_true", help="ask for <think> reasoning")
    p.add_argument("--instruction", help="system instruction: direct, reasoning or a text file")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--temperature", type=float, help="default 0.01 direct, 0.6 reasoning")
    p.add_argument("--top-p", type=float, help="default 0.01 direct, 0.4 reasoning")
    p.add_argument("--repetition-penalty", type=float, help="default 1.1")
    p.add_argument("--max-new-tokens", type=int, help="default 4096")
    p.add_argument("--seed", type=int, help="sampling seed (default 1234)")
    p.add_argument("--layout", choices=list(LAYOUTS), default="auto",
                   help="table layout (default: detected)")
    p.add_argument("--uns-key", help=".h5ad input: uns key of the rank_genes_groups result")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", help="SQLite cache file (default: "
                       "$CELLREASONER_CACHE/annotations.sqlite)")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write a cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Claim the output (checked, locked) before any work, then run."""
    from ._outputs import annotate_markers_outputs

    with annotate_markers_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..markers import annotate_markers
    from .annotate import backend_options

    out = Path(args.output)
    if out.suffix.lower() != ".csv":
        raise InputError(f"Output {out}: use a .csv path (one row per cluster).")
    if args.label_map and not args.check_labels:
        raise InputError("--label-map only applies with --check-labels.")
    opts = backend_options(args)
    opts.pop("markers", None)  # knowledge for the built-in evidence, not a backend option
    result = annotate_markers(
        args.table, args.backend, model=args.model, tissue=args.tissue, species=args.species,
        markers=args.markers, top=args.top, max_padj=args.max_padj, min_logfc=args.min_logfc,
        check_labels=args.check_labels, label_map=args.label_map,
        prompt_style=args.prompt_style, clusters_per_call=args.clusters_per_call,
        reasoning=args.reasoning, instruction=args.instruction, n=args.n,
        temperature=args.temperature, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        cache=False if args.no_cache else args.cache,
        backend_options=opts if args.backend != "builtin" else None, layout=args.layout,
        uns_key=args.uns_key, deliberate=args.deliberate)
    result.to_csv(out)
    t = result.table
    labels = ", ".join(f"{c}: {lb}" for c, lb in zip(t["cluster"], t["cellreasoner_label"],
                                                     strict=True))
    print(f"{len(t)} clusters ({result.backend}): {labels}", file=sys.stderr)
    if args.check_labels:
        counts = t["label_check"].value_counts()
        print("label check: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
              file=sys.stderr)
        for c, r in zip(t["cluster"][t["label_check"] == "disagrees"],
                        t["label_check_reason"][t["label_check"] == "disagrees"], strict=True):
            print(f"  {c}: {r}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0
