"""Which files each command writes and reads, claimed before its work starts.

Each function returns :func:`cellreasoner.io.write.claim_outputs` for one command: no two
outputs the same file, none of them an input, every folder writable, and the outputs locked
against a second run, all checked before the model work starts.
"""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path

from ..io.write import claim_outputs


def _get(args: argparse.Namespace, name: str):
    return getattr(args, name, None)


def annotate_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``annotate``: ``-o``, ``--csv``, ``--report``; against the input and the files it reads."""
    return claim_outputs(
        {"-o": args.output, "--csv": _get(args, "csv"), "--report": _get(args, "report")},
        {"input": args.input, "--cache": _get(args, "cache"),
         "--gene-list": _get(args, "gene_list"), "--markers": _get(args, "markers"),
         "--cluster-markers": _get(args, "cluster_markers"),
         "--truth-map": _get(args, "truth_map"), "--gtf": _get(args, "gtf"),
         "--barcodes": _get(args, "barcodes"), "--manifest": _get(args, "manifest")},
    )


def annotate_markers_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``annotate-markers``: ``-o``; against the table and the files it reads."""
    inputs = {"TABLE": args.table, "--cache": _get(args, "cache"),
              "--label-map": _get(args, "label_map")}
    for i, m in enumerate(_get(args, "markers") or []):
        inputs[f"--markers #{i + 1}"] = m
    return claim_outputs({"-o": args.output}, inputs)


def prepare_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``prepare``: ``-o``; against the input and the gene list."""
    return claim_outputs({"-o": args.output},
                         {"input": args.input, "--gene-list": _get(args, "gene_list")})


def gene_activity_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``gene-activity``: ``-o``; against the input, the annotation and the barcode list."""
    return claim_outputs({"-o": args.output},
                         {"input": args.input, "--gtf": _get(args, "gtf"),
                          "--barcodes": _get(args, "barcodes")})


def report_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``report``: ``-o``; against the results, the pair table and the truth map."""
    return claim_outputs({"-o": args.output},
                         {"RESULTS": args.results, "--pair-table": _get(args, "pair_table"),
                          "--truth-map": _get(args, "truth_map")})


def evaluate_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``evaluate``: the tables in ``-o OUTDIR``; against every results file and pair table."""
    outdir = _get(args, "outdir")
    from ..evaluation._result import TABLE_FILES  # figures are named after the runs

    outputs = {f"-o {outdir}/{n}": Path(outdir) / n for n in TABLE_FILES} if outdir else {}
    inputs = {f"RESULTS #{i + 1}": r for i, r in enumerate(args.results)}
    inputs["--pair-table"] = _get(args, "pair_table")
    inputs["--truth-map"] = _get(args, "truth_map")
    return claim_outputs(outputs, inputs)


def audit_outputs(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``audit``: ``-o``, ``--summary``, ``--report``; against the input and the markers."""
    return claim_outputs(
        {"-o": _get(args, "output"), "--summary": _get(args, "summary"),
         "--report": _get(args, "report")},
        {"input": args.input, "--markers": _get(args, "markers")},
    )
