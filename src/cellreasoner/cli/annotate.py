"""``cellreasoner annotate``: label every cell of a dataset, write .h5ad and/or CSV."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate",
        help="annotate cell types (labels, confidence, reasoning, ontology ids)",
        description="Annotate every cell with a cell type. Identical prompts are generated once, "
        "finished answers are cached (a killed run resumes where it stopped), and cluster mode "
        "asks once per cluster.",
    )
    _add_files(p)
    add_backend_arguments(p, "cell")
    _add_prompting(p)
    _add_sampling(p)
    _add_reading(p)
    _add_knowledge(p)
    _add_outputs_and_engine(p)
    p.set_defaults(func=run)


def _add_files(p: argparse.ArgumentParser) -> None:
    """The input and the files written."""
    p.add_argument("input", help=".h5ad, Seurat .rds, 10x .h5 / matrix directory, CSV/TSV, "
                   "scATAC-seq (fragments.tsv.gz, peak matrix, .h5mu: read as gene activity, "
                   "see --gtf), or the demo names pbmc68k_reduced / pbmc_demo")
    p.add_argument("-o", "--output", required=True,
                   help="output .h5ad (annotated AnnData); a .csv or .parquet path writes only "
                   "the per-cell table (no matrix copy: the fastest output at atlas scale)")
    p.add_argument("--csv", help="also write the upstream-layout result table here")
    p.add_argument("--report", metavar="HTML", help="also write the offline HTML report here "
                   "(with metrics when --label-column is given)")

def _add_prompting(p: argparse.ArgumentParser) -> None:
    """What the prompts ask, and per cell or per cluster."""
    p.add_argument("--reasoning", action="store_true",
                   help="ask for <think> reasoning (upstream reasoning instruction)")
    p.add_argument("--prompt-style", choices=["auto", "cellreasoner", "neutral"],
                   default="auto",
                   help="auto (default): the published CellReasoner instruction for "
                   "CellReasoner models, a neutral tissue-aware one for every other model")
    p.add_argument("--instruction", help="system instruction: direct or reasoning (the "
                   "upstream text of that mode) or a text file")
    p.add_argument("--mode", choices=["cell", "cluster", "hybrid"], default="cell",
                   help="cell (default), cluster (one prompt per cluster; the builtin labels a "
                   "cluster with what 75%% of its cells agree on and flags mixed clusters), "
                   "hybrid (per cell + cluster majority)")
    p.add_argument("--by", help="obs column with clusters (cluster/hybrid); default leiden "
                   "(computed when absent)")
    p.add_argument("--resolution", type=float, default=1.0,
                   help="Leiden resolution when the clusters are computed (default 1.0)")

def _add_sampling(p: argparse.ArgumentParser) -> None:
    """Sampling, failures and batching."""
    p.add_argument("--n", type=int, default=1,
                   help="self-consistency samples per prompt (default 1)")
    p.add_argument("--temperature", type=float, help="default 0.01 direct, 0.6 reasoning")
    p.add_argument("--top-p", type=float, help="default 0.01 direct, 0.4 reasoning")
    p.add_argument("--repetition-penalty", type=float, help="default 1.1")
    p.add_argument("--max-new-tokens", type=int, help="default 4096")
    p.add_argument("--seed", type=int, help="sampling seed (default 1234)")
    p.add_argument("--fail-on-error", action="store_true",
                   help="exit with status 3 when some prompt got no usable answer (its cells "
                   "are written as 'Unknown' either way, and a rerun asks it again)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="prompts per backend call (default 256)")

def _add_reading(p: argparse.ArgumentParser) -> None:
    """What is read: the gene list, the matrix, the truth, the cache."""
    p.add_argument("--gene-list", help="ranked gene list file (default: the published list)")
    p.add_argument("--max-genes", type=int, default=1000, help="genes per sentence (1000)")
    p.add_argument("--layer", help="layer to read instead of X")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw")
    p.add_argument("--assay", help="Seurat assay (default: the active assay; upstream: "
                   "integrated, else RNA, as upstream CellReasoner)")
    p.add_argument("--label-column",
                   help="obs column with ground truth (the CSV 'labels' column)")
    p.add_argument("--truth-map", metavar="TSV",
                   help="with --report and --label-column: how to read the truth labels (a TSV "
                   "with columns truth and cl_id)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", help="SQLite cache file (default: "
                       "$CELLREASONER_CACHE/annotations.sqlite)")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write a cache")

def _add_knowledge(p: argparse.ArgumentParser) -> None:
    """Marker knowledge, cluster markers, tissue, species, ATAC input."""
    p.add_argument("--markers", help="builtin backend: your own marker knowledge-base file "
                   "(same TSV columns as the shipped one, a CellMarker 2.0 table or a "
                   "PanglaoDB TSV/xlsx), merged into the built-in one")
    p.add_argument("--cluster-markers", help="cluster mode: marker file (JSON "
                   "{cluster: [genes]} or a CSV/TSV with cluster and gene columns, e.g. "
                   "Seurat FindAllMarkers)")
    p.add_argument("--n-markers", type=int,
                   help="markers per cluster sentence (default 100 for CellReasoner models, "
                   "30 for other models)")
    p.add_argument("--tissue", help="builtin: restrict the knowledge base to this tissue's "
                   "cell types (e.g. blood); LLM backends: tissue name added to the instruction")
    p.add_argument("--species", choices=["auto", "human", "mouse"], default="auto",
                   help="auto (default): read from the gene symbols' case (Cd3e: mouse, CD3E: "
                   "human); mouse data keeps its own symbols (orthologs: Ensembl 105, "
                   "downloaded once with a pinned hash, or $CELLREASONER_ORTHOLOGS)")
    from .gene_activity import add_atac_options

    add_atac_options(p)
    p.add_argument("--accessibility-prompt", action=argparse.BooleanOptionalAction,
                   default=None, help="model backends: say that the genes are ranked by "
                   "chromatin accessibility (default: on for ATAC input with the neutral "
                   "prompt style, off with the published CellReasoner instruction)")

def _add_outputs_and_engine(p: argparse.ArgumentParser) -> None:
    """obs column names, the engine (local or Ray), progress and logging."""
    p.add_argument("--key-added", default="cellreasoner", help="obs column prefix")
    p.add_argument("--cellxgene", action="store_true",
                   help="also write obs['cell_type_ontology_term_id'] (CELLxGENE schema; "
                   "'unknown' where no CL term)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): this process; ray: chunks of cells / blocks of "
                   "unique prompts answered on a Ray cluster (pip install 'cellreasoner[ray]')")
    p.add_argument("--address", help="Ray cluster: auto (the cluster of this machine), "
                   "ray://HOST:10001, or HOST:PORT; default: $RAY_ADDRESS if set, else a local "
                   "cluster of --workers CPUs")
    p.add_argument("--workers", type=int,
                   help="local: worker processes for the builtin reading an .h5ad (default: "
                   "every core, at most 8, for files of 40,000 cells per core; 1: one process); "
                   "Ray: tasks or backend replicas at a time (default: the cluster's CPUs)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="Ray: GPUs per backend replica (transformers, vllm; default 0)")
    p.add_argument("--chunk-size", type=int, help="built-in reasoner on local workers or "
                   "Ray: cells per task (default 10000 on local workers; 20000 on Ray, "
                   "also its manifest block)")
    p.add_argument("--manifest", help="Ray: run manifest of finished blocks, a folder or an "
                   "object-store URI (s3://bucket/prefix, gs://..., hdfs://..., file://...; "
                   "credentials from the environment, e.g. AWS_ACCESS_KEY_ID; default: "
                   "OUTPUT.manifest beside the output); rerunning the same command skips them")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log debug information, and one line per HTTP request (the same as "
                   "cellreasoner -v annotate ...)")

def add_backend_arguments(p: argparse.ArgumentParser, item: str) -> None:
    """The backend options every command that asks a backend takes (``item``: what is
    labelled, ``"cell"`` or ``"cluster"``), read back by :func:`backend_options`."""
    p.add_argument("--backend", default="builtin", metavar="NAME[:MODEL][,...]",
                   type=backend_list,
                   help="builtin (default, no model needed), transformers, openai, vllm, gguf; "
                   "NAME:MODEL names the model too; several, comma-separated (e.g. "
                   "builtin,openai:MODEL_A,gguf:PATH), make a consensus run: an ontology-aware "
                   f"vote, with per-{item} agreement, entropy and each backend's own label")
    p.add_argument("--deliberate", action="store_true",
                   help="consensus runs: one deliberation round in which the LLM backends see, "
                   f"for the {item}s they disagree on, the other answers and their cited "
                   "markers and may revise (cached)")
    p.add_argument("--model", help="model name, folder or file for the backend")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (openai "
                   "backend); the key itself is never written anywhere")
    p.add_argument("--concurrency", type=int,
                   help="parallel requests (openai backend)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (gguf backend; default: every core this process may use)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="seconds allowed per request attempt (openai backend; default 120)")
    p.add_argument("--max-retries", type=int, metavar="N",
                   help="retries per request on rate limits, server errors, lost connections, "
                   "timeouts and malformed replies (openai backend; default 3)")
    p.add_argument("--stream", action="store_true",
                   help="stream answers as they are written (openai backend): the progress bar "
                   "moves within long reasoning answers and --timeout bounds the silence between "
                   "tokens instead of the whole answer")


def backend_list(text: str) -> str:
    """``--backend``'s value checked at parse time: each comma-separated ``NAME[:MODEL]`` names
    a registered backend (argparse reports the first that does not)."""
    from ..backends import BACKENDS

    for item in text.split(","):
        name = item.strip().partition(":")[0].strip()
        if name not in BACKENDS:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {name!r} (choose from {', '.join(sorted(BACKENDS))}; "
                "several as builtin,openai:MODEL,...)")
    return text


def backend_options(args: argparse.Namespace) -> dict:
    """Backend constructor options given on the command line (only those set)."""
    from .._secrets import register_secret, register_url

    opts = {}
    if args.base_url:
        register_url(args.base_url)  # its credentials are blanked in every message
        opts["base_url"] = args.base_url
    register_secret(os.environ.get(args.api_key_env or "OPENAI_API_KEY"))
    if args.api_key_env:
        if args.api_key_env not in os.environ:
            from ..errors import InputError

            raise InputError(f"--api-key-env {args.api_key_env}: that environment variable is "
                             "not set. Export it first (the key is read, never stored).")
        opts["api_key_env"] = args.api_key_env
    for name in ("concurrency", "timeout", "max_retries"):
        if getattr(args, name, None) is not None:
            opts[name] = getattr(args, name)
    if getattr(args, "stream", False):
        opts["stream"] = True
    if getattr(args, "threads", None) is not None:
        opts["n_threads"] = args.threads
    if getattr(args, "markers", None):
        opts["markers"] = args.markers
    return opts


def run(args: argparse.Namespace) -> int:
    """Claim the outputs (checked, locked) before any work, then run."""
    from ._outputs import annotate_outputs

    with annotate_outputs(args):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..annotation import annotate
    from ..annotation.output import SUFFIXES
    from ..errors import InputError

    out = Path(args.output)
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"Output {out}: use a .h5ad (annotated AnnData), .csv or .parquet "
                         "path.")
    if args.truth_map and not (args.report and args.label_column):
        raise InputError("--truth-map reads the truth labels of the report: give it with "
                         "--report HTML and --label-column COLUMN.")
    if args.truth_map:  # a bad map stops here, not after the annotation
        from ..evaluation.truth import read_truth_map

        read_truth_map(args.truth_map)
    if args.report and Path(args.report).suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--report {args.report}: use an .html path.")
    data = args.input
    if args.gtf or args.barcodes:  # an ATAC input read with the given annotation / cells
        from ..atac import read_atac

        data = read_atac(args.input, gtf=args.gtf, barcodes=args.barcodes)
    with _copy_ahead(args, data, out) as ahead:
        result = annotate(data, args.backend, **_annotate_options(args, out))
        written = [result.write(out, cellxgene=args.cellxgene, ahead=ahead)]
    if args.csv:
        written.append(result.to_csv(args.csv))
    if args.report:
        import logging

        from ..report import write_report

        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        # cluster / hybrid runs: the report browses the clusters recorded in the provenance
        written.append(write_report(result.adata, args.report, truth=args.label_column,
                                    pred=f"{args.key_added}_label", truth_map=args.truth_map))
    # plain lines (no wrapping): scripts and logs parse the summary
    print(result.summary_line(), file=sys.stderr)
    prov = result.provenance
    if prov.get("engine") == "ray":
        print(f"ray: {prov['workers']} worker(s); manifest {prov.get('manifest', '-')}: "
              f"{prov.get('manifest_blocks', 0)} block(s), {prov.get('skipped_blocks', 0)} "
              "read back from an earlier run", file=sys.stderr)
    labels = result.table["label"].value_counts()
    top = ", ".join(f"{k or '(no label)'} ({v})" for k, v in labels.head(5).items())
    print(f"labels: {top}" + (" ..." if len(labels) > 5 else ""), file=sys.stderr)
    print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return _report_failures(result.provenance, args.fail_on_error)


def _annotate_options(args: argparse.Namespace, out: Path) -> dict:
    """The keyword options of :func:`cellreasoner.annotate` the command line gives."""
    return dict(
        model=args.model, reasoning=args.reasoning,
        prompt_style=args.prompt_style, instruction=args.instruction, mode=args.mode,
        by=args.by, resolution=args.resolution, n=args.n, temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
        seed=args.seed, gene_list=args.gene_list, max_genes=args.max_genes, layer=args.layer,
        use_raw=args.use_raw, assay=args.assay, label_key=args.label_column,
        cluster_markers=args.cluster_markers, n_markers=args.n_markers, tissue=args.tissue,
        species=args.species,
        accessibility_prompt=args.accessibility_prompt,
        key_added=args.key_added, cache=False if args.no_cache else args.cache,
        batch_size=args.batch_size, backend_options=backend_options(args),
        progress=not args.no_progress, deliberate=args.deliberate,
        **_engine_options(args, out),
    )


def _copy_ahead(args: argparse.Namespace, data, out: Path):
    """A :class:`~cellreasoner.annotation.output.CopyAhead` of a streamed ``.h5ad`` input
    when the output is ``.h5ad`` (the file copy overlaps the annotation), else a no-op."""
    import contextlib

    from ..annotation.output import CopyAhead
    from ..io import streams_from_file

    if out.suffix.lower() == ".h5ad" and streams_from_file(data, layer=args.layer,
                                                           use_raw=bool(args.use_raw)):
        return CopyAhead(data, out)
    return contextlib.nullcontext(None)


def _engine_options(args: argparse.Namespace, out: Path) -> dict:
    """``engine=`` and the Ray engine's options (its manifest beside the output by default)."""
    from ..errors import InputError

    if args.engine != "ray":
        given = [f for f, v in (("--address", args.address), ("--manifest", args.manifest),
                                ("--gpus-per-worker", args.gpus_per_worker or None)) if v]
        if given:
            raise InputError(f"{', '.join(given)} only apply to --engine ray.")
        return {k: v for k, v in (("workers", args.workers), ("chunk_size", args.chunk_size))
                if v is not None}
    return {"engine": "ray", "address": args.address, "workers": args.workers,
            "num_gpus": args.gpus_per_worker, "chunk_size": args.chunk_size,
            "manifest": args.manifest or out.with_name(out.name + ".manifest")}


def _report_failures(provenance: dict, fail_on_error: bool) -> int:
    """Say which prompts failed or did not parse; exit status 3 with ``--fail-on-error``."""
    failed, cells = provenance.get("failed_prompts", 0), provenance.get("failed_cells", 0)
    unparsed = provenance.get("unparsed_cells", 0)
    if unparsed:
        print(f"note: {unparsed} cell(s) got an answer that is not a cell type; they are "
              "labelled Unknown (failure column 'parse', raw answer kept in the response "
              "column).", file=sys.stderr)
    if failed:
        print(f"warning: {failed} prompt(s) ({cells} cell(s)) got no usable answer from the "
              "model server after retries; they are labelled Unknown (failure column "
              "'request') and were not cached: run the same command again to ask them again.",
              file=sys.stderr)
        return 3 if fail_on_error else 0
    return 0
