"""The run manifest: which blocks of a distributed run are finished, and their answers.

A manifest is a folder: ``manifest.json`` (the run's fingerprint and the finished blocks) and
``blocks/<block>.parquet`` (each finished block's answers). The one writer (the driver) writes a
block's file, then the manifest, each atomically (:func:`cellreasoner.io.write.atomic_path`),
so a driver killed at any moment leaves a manifest that lists only whole blocks; rerunning the
same command reads those blocks back instead of answering them again. A block is recorded once:
a second :meth:`RunManifest.record` of it is refused. The files are data (JSON, Parquet),
never executed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..io.write import atomic_path

log = logging.getLogger(__name__)

#: The manifest layout this code writes and reads.
VERSION = 1


def fingerprint_key(fingerprint: dict) -> str:
    """A stable hash of a run's settings (what makes its blocks reusable)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RunManifest:
    """The finished blocks of one run, kept in ``folder``.

    Parameters
    ----------
    folder
        The manifest folder (created when missing).
    fingerprint
        The run's settings (input, backend, model, sampling, ...): a manifest written by a run
        with other settings is not reused (its blocks are discarded, with a warning).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"Manifest {self.folder}: a file is in the way; the manifest is a "
                             "folder. Pass another --manifest path.")
        self.key = fingerprint_key(fingerprint)  # only its hash is written (no URLs, paths)
        self.blocks: dict[str, dict] = {}
        #: blocks read back from an earlier run instead of being answered again
        self.skipped = 0
        self._load()

    @property
    def path(self) -> Path:
        return self.folder / "manifest.json"

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"Manifest {self.path} cannot be read ({exc}); delete the folder "
                             f"{self.folder} to start the run over.") from None
        if data.get("version") != VERSION or data.get("key") != self.key:
            log.warning("manifest %s belongs to a run with other settings; its %d finished "
                        "block(s) are not reused", self.path, len(data.get("blocks", {})))
            return
        self.blocks = {b: e for b, e in data.get("blocks", {}).items()
                       if (self.folder / e["file"]).is_file()}

    def finished(self, block: str) -> bool:
        """Whether ``block`` was finished by this run or an earlier one with its settings."""
        return block in self.blocks

    def load(self, block: str) -> pd.DataFrame:
        """A finished block's answers, as recorded (counted in :attr:`skipped`)."""
        entry = self.blocks[block]
        frame = pd.read_parquet(self.folder / entry["file"])
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
        with atomic_path(self.folder / name) as tmp:
            frame.to_parquet(tmp, index=False)
        self.blocks[block] = {"file": name, "rows": len(frame)}
        self._write()

    def _write(self) -> None:
        data = {"version": VERSION, "key": self.key, "blocks": self.blocks}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))


__all__ = ["RunManifest", "fingerprint_key"]
