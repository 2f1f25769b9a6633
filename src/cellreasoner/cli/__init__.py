"""Command-line interface: a thin layer over the Python API.

Each subcommand lives in ``cellreasoner/cli/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed args).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .._secrets import install_log_redaction, redact_text
from ..errors import CellReasonerError, OutputError

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("prepare", "annotate", "annotate_markers", "audit", "gene_activity", "evaluate",
            "report", "train")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands registered by their modules)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cellreasoner",
        description="Interpretable cell-type annotation of single-cell data with reasoning LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"cellreasoner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cellreasoner.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cellreasoner.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellreasoner`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()  # no credentials of a server URL or API key in any log line
    if not args.verbose:  # one INFO line per HTTP request is noise; -v shows them
        for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except OutputError as exc:  # the input was fine; writing failed (disk, folder, lock)
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except CellReasonerError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept in the cache; run the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
