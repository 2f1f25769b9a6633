"""Persistent cache of model generations (SQLite, WAL), so killed runs resume without rework.

One row per generated sample, keyed by backend, model, prompt key, sampling key and sample
index. Every :meth:`GenerationCache.put` commits at once (WAL with ``synchronous=NORMAL``: a
commit costs microseconds and survives a killed process), so a run stopped by Ctrl-C, an
out-of-memory kill or a crashed server loses no finished prompt and a restart repeats none.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._sqlite import connect, transaction
from ..backends.base import Generation
from ..errors import InputError
from ..prompts import SamplingParams

#: File name of the default cache under :func:`cellreasoner.resources.cache_dir`.
DEFAULT_CACHE_NAME = "annotations.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_key TEXT NOT NULL,
    sampling_key TEXT NOT NULL,
    sample INTEGER NOT NULL,
    text TEXT NOT NULL,
    reasoning TEXT,
    meta TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def sampling_key(sampling: SamplingParams) -> str:
    """The sampling settings that change an answer (everything but ``n``).

    ``n`` is excluded so that sample ``i`` of a run with ``n=3`` is reused by a later run with
    ``n=5``, which then generates only samples 3 and 4.
    """
    d = sampling.to_dict()
    d.pop("n", None)
    return json.dumps(d, sort_keys=True, default=str)


def default_cache_path() -> Path:
    """``<cache_dir>/annotations.sqlite`` (``$CELLREASONER_CACHE`` or the platform cache)."""
    from ..resources import cache_dir

    return cache_dir() / DEFAULT_CACHE_NAME


class GenerationCache:
    """A SQLite store of generations, safe to share between threads and processes.

    Parameters
    ----------
    path
        The database file (created with its parent folders when missing).
    backend, model
        Part of every key: a cache never mixes answers of different models.
    sampling
        Generation settings; part of every key (see :func:`sampling_key`).
    """

    def __init__(self, path: str | os.PathLike, backend: str, model: str,
                 sampling: SamplingParams):
        self.path = Path(path).expanduser()
        self.backend, self.model = str(backend), str(model or "")
        self.sampling_key = sampling_key(sampling)
        self.hits = 0
        self.writes = 0
        self._lock = threading.Lock()
        try:
            self._db = connect(self.path, [_SCHEMA])
        except (sqlite3.DatabaseError, OSError) as exc:
            raise InputError(
                f"Cannot use {self.path} as the annotation cache ({exc}). Pass another path "
                "with --cache PATH (cache=...) or disable it with --no-cache (cache=False)."
            ) from exc

    def key(self, prompt_key: str, sample: int) -> str:
        """Row key of sample ``sample`` of a prompt."""
        raw = json.dumps([self.backend, self.model, prompt_key, self.sampling_key, int(sample)])
        return hashlib.sha256(raw.encode()).hexdigest()

    def get_many(self, prompt_keys: Sequence[str], n: int) -> dict[str, list[Generation | None]]:
        """Cached samples ``0..n-1`` of each prompt (``None`` where a sample is missing).

        Only prompts with at least one cached sample appear in the result.
        """
        wanted = {self.key(pk, s): (pk, s) for pk in dict.fromkeys(prompt_keys) for s in range(n)}
        out: dict[str, list[Generation | None]] = {}
        keys = list(wanted)
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, text, reasoning, meta FROM generations WHERE key IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, text, reasoning, meta in rows:
                    pk, s = wanted[key]
                    out.setdefault(pk, [None] * n)[s] = Generation(
                        text=text, reasoning=reasoning, meta=json.loads(meta))
        self.hits += sum(g is not None for gens in out.values() for g in gens)
        return out

    def put(self, prompt_key: str, generations: Sequence[Generation], first_sample: int = 0
            ) -> None:
        """Store the samples of one prompt (sample indices from ``first_sample``); commits."""
        self.put_many([(prompt_key, first_sample, generations)])

    def put_many(self, items: Iterable[tuple[str, int, Sequence[Generation]]]) -> None:
        """Store ``(prompt_key, first_sample, generations)`` items in one transaction."""
        now = time.time()
        rows = [
            (self.key(pk, first + j), self.backend, self.model, pk, self.sampling_key, first + j,
             g.text or "", g.reasoning, json.dumps(g.meta or {}, default=_json_default), now)
            for pk, first, gens in items for j, g in enumerate(gens)
        ]
        if not rows:
            return
        with self._lock, transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.writes += len(rows)

    def count(self) -> int:
        """Number of stored samples for this backend, model and sampling."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM generations WHERE backend=? AND model=? AND sampling_key=?",
                (self.backend, self.model, self.sampling_key)).fetchone()[0]

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_default(obj):
    """numpy scalars/arrays in ``Generation.meta`` -> plain JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
