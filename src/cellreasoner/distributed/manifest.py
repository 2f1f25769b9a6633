"""The run manifest: which blocks of a distributed run are finished, and their answers.

A manifest is a folder, or a prefix on an object store (``s3://bucket/prefix``, ``gs://``,
``hdfs://``; see :mod:`.store`): ``manifest.json`` (the run's fingerprint and the finished
blocks) and ``blocks/<block>.parquet`` (each finished block's answers). The one writer (the
driver) writes a block's file, then the manifest, each atomically (locally
:func:`cellreasoner.io.write.atomic_path`; on an object store one PUT per object), so a driver
killed at any moment leaves a manifest that lists only whole blocks; rerunning the same command
reads those blocks back instead of answering them again. A block is recorded once: a second
:meth:`RunManifest.record` of it is refused. The files are data (JSON, Parquet), never
executed; they hold no paths, URIs or credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from ..errors import InputError
from .store import ManifestStore

log = logging.getLogger(__name__)

#: The manifest layout this code writes and reads.
VERSION = 1
#: The manifest object's name inside the folder / prefix.
MANIFEST = "manifest.json"


def fingerprint_key(fingerprint: dict) -> str:
    """A stable hash of a run's settings (what makes its blocks reusable)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunManifest:
    """The finished blocks of one run, kept in ``folder``.

    Parameters
    ----------
    folder
        The manifest folder (created when missing), or an object-store URI
        (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://host:port/path``,
        ``file:///path``) whose bucket exists; credentials come from the environment
        (``AWS_ACCESS_KEY_ID`` ...), and a URI carrying some is only ever shown redacted.
    fingerprint
        The run's settings (input, backend, model, sampling, ...): a manifest written by a run
        with other settings is not reused (its blocks are discarded, with a warning).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict) -> None:
        self.store = ManifestStore(folder)
        #: the local folder, or the store URI redacted (what logs and provenance show)
        self.folder: Path | str = self.store.root if self.store.local else self.store.display
        self.key = fingerprint_key(fingerprint)  # only its hash is written (no URLs, paths)
        self.blocks: dict[str, dict] = {}
        #: blocks read back from an earlier run instead of being answered again
        self.skipped = 0
        self._load()

    @property
    def path(self) -> Path | str:
        """``manifest.json`` (a local path, or the redacted URI of the object)."""
        return self.folder / MANIFEST if self.store.local else self.store.where(MANIFEST)

    def _load(self) -> None:
        if not self.store.exists(MANIFEST):
            return
        try:
            data = json.loads(self.store.read(MANIFEST))
        except (OSError, ValueError) as exc:
            raise InputError(f"Manifest {self.path} cannot be read ({self.store.reason(exc)}); "
                             f"delete {self.folder} to start the run over.") from None
        if data.get("version") != VERSION or data.get("key") != self.key:
            log.warning("manifest %s belongs to a run with other settings; its %d finished "
                        "block(s) are not reused", self.path, len(data.get("blocks", {})))
            return
        present = self.store.names("blocks")
        self.blocks = {b: e for b, e in data.get("blocks", {}).items() if e["file"] in present}

    def finished(self, block: str) -> bool:
        """Whether ``block`` was finished by this run or an earlier one with its settings."""
        return block in self.blocks

    def load(self, block: str) -> pd.DataFrame:
        """A finished block's answers, as recorded (counted in :attr:`skipped`)."""
        entry = self.blocks[block]
        try:
            frame = self.store.read_parquet(entry["file"])
        except (OSError, ValueError) as exc:
            raise InputError(f"Manifest {self.path}: block {block} cannot be read "
                             f"({self.store.reason(exc)}); delete {self.folder} to start "
                             "over.") from None
        if len(frame) != entry["rows"]:
            raise InputError(f"Manifest {self.path}: block {block} has {len(frame)} rows, the "
                             f"manifest says {entry['rows']}; delete {self.folder} to start "
                             "over.")
        self.skipped += 1
        return frame

    def record(self, block: str, frame: pd.DataFrame) -> None:
        """Write ``block``'s answers, then list it as finished (each step atomic)."""
        if block in self.blocks:
            raise RuntimeError(f"block {block} is already recorded in {self.path}")
        name = f"blocks/{hashlib.sha256(block.encode()).hexdigest()[:24]}.parquet"
        self.store.write_parquet(name, frame)
        self.blocks[block] = {"file": name, "rows": len(frame)}
        self._write()

    def _write(self) -> None:
        data = {"version": VERSION, "key": self.key, "blocks": self.blocks}
        self.store.write(MANIFEST, json.dumps(data, indent=1).encode())


__all__ = ["RunManifest", "fingerprint_key"]
