"""Persistent cache of model generations (SQLite, WAL), so killed runs resume without rework.

One row per generated sample, keyed by backend, model, prompt key, sampling key and sample
index. Every :meth:`GenerationCache.put` commits at once (WAL with ``synchronous=NORMAL``: a
commit costs microseconds and survives a killed process), so a run stopped by Ctrl-C, an
out-of-memory kill or a crashed server loses no finished prompt and a restart repeats none.

Runs that share one cache file share the work: before asking a prompt a run *claims* it
(:meth:`GenerationCache.claim`: a ``claims`` row with the run as owner and a lease of
:data:`LEASE_SECONDS`, renewed by a background thread while the run lives). Other runs skip
claimed prompts and wait for their answers; storing an answer, or a failure, drops the claim.
A killed owner stops renewing, so its claims expire and another run asks those prompts again
(at once when the owner was a process of this host that no longer exists): nothing waits
forever, and only prompts in flight at a kill are asked twice.

A broken file (not a database, "database disk image is malformed", tables of another layout)
is an :class:`~cellreasoner.errors.InputError` naming the file, whenever it shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from .._sqlite import BUSY_TIMEOUT, connect, transaction
from ..backends.base import Generation
from ..errors import InputError
from ..prompts import SamplingParams

log = logging.getLogger(__name__)

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
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
)
"""
#: Seconds a claim lives without renewal (a live run renews its claims every quarter of it).
LEASE_SECONDS = 10.0


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


def resolve_cache_path(cache: str | os.PathLike | bool | None) -> Path | None:
    """The cache file of a run's ``cache`` option: ``None``/``True`` the default
    (:func:`default_cache_path`), a path itself, ``False`` none."""
    if cache is False:
        return None
    return default_cache_path() if cache in (None, True) else Path(cache)


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
    lease
        Seconds a claim of this run lives without renewal (default :data:`LEASE_SECONDS`).
    """

    def __init__(self, path: str | os.PathLike, backend: str, model: str,
                 sampling: SamplingParams, *, lease: float = LEASE_SECONDS):
        self.path = Path(path).expanduser()
        self.backend, self.model = str(backend), str(model or "")
        self.sampling_key = sampling_key(sampling)
        self.hits = 0
        self.writes = 0
        #: This run's name in the ``claims`` table (host, process, random part).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = float(lease)
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            self._db = connect(self.path, [_SCHEMA, _CLAIMS])
        except (sqlite3.DatabaseError, OSError) as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc: BaseException) -> InputError:
        return InputError(
            f"Cannot use {self.path} as the annotation cache ({exc}). Delete that file (it "
            "holds only cached answers) or pass another path with --cache PATH (cache=...), "
            "or run without it with --no-cache (cache=False)."
        )

    @contextlib.contextmanager
    def _using(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection under the lock (in a transaction when ``write``); a broken file
        becomes one clear :class:`InputError`."""
        with self._lock:
            if self._db is None:
                raise InputError(f"The annotation cache {self.path} is closed.")
            try:
                if write:
                    with transaction(self._db):
                        yield self._db
                else:
                    yield self._db
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise InputError(
                        f"The annotation cache {self.path} stayed locked by another process "
                        f"for {BUSY_TIMEOUT:g} s ({exc}); try again, or pass another --cache "
                        "PATH."
                    ) from exc
                raise self._broken(exc) from exc
            except sqlite3.DatabaseError as exc:
                raise self._broken(exc) from exc

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
        with self._using() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(
                    f"SELECT key, text, reasoning, meta FROM generations WHERE key IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, text, reasoning, meta in rows:
                    pk, s = wanted[key]
                    out.setdefault(pk, [None] * n)[s] = Generation(
                        text=text, reasoning=reasoning, meta=self._meta(meta))
        self.hits += sum(g is not None for gens in out.values() for g in gens)
        return out

    def put(self, prompt_key: str, generations: Sequence[Generation], first_sample: int = 0
            ) -> None:
        """Store the samples of one prompt (sample indices from ``first_sample``); commits."""
        self.put_many([(prompt_key, first_sample, generations)])

    def put_many(self, items: Iterable[tuple[str, int, Sequence[Generation]]]) -> None:
        """Store ``(prompt_key, first_sample, generations)`` items in one transaction, and
        drop this run's claims on them."""
        items = list(items)
        now = time.time()
        rows = [
            (self.key(pk, first + j), self.backend, self.model, pk, self.sampling_key, first + j,
             g.text or "", g.reasoning, json.dumps(g.meta or {}, default=_json_default), now)
            for pk, first, gens in items for j, g in enumerate(gens)
        ]
        if not rows:
            return
        claimed = [(self.key(pk, first), self.owner) for pk, first, _ in items]
        with self._using(write=True) as db:
            db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            db.executemany("DELETE FROM claims WHERE key=? AND owner=?", claimed)
        self.writes += len(rows)

    # -- claims: runs sharing this file share the work -------------------------------------

    def claim(self, prompt_keys: Iterable[str], first_sample: int, limit: int,
              last_sample: int | None = None) -> tuple[list[str], list[str]]:
        """Claim up to ``limit`` of ``prompt_keys`` (samples from ``first_sample``) for this run.

        A prompt is claimable when it is not answered (its sample ``last_sample``, default
        ``first_sample``, is not stored) and no other live run holds it (no claim, an expired
        one, one of a process of this host that is gone, or this run's own). ``prompt_keys``
        is read lazily, 500 at a time, only as far as needed.

        Returns
        -------
        tuple
            ``(claimed, answered)`` prompt keys in the given order: those now this run's, and
            those seen answered on the way (read them with :meth:`get_many`).
        """
        last = first_sample if last_sample is None else last_sample
        got: list[str] = []
        answered: list[str] = []
        it = iter(prompt_keys)
        now = time.time()
        with self._using(write=True) as db:
            while len(got) < limit:
                chunk = list(itertools.islice(it, 500))
                if not chunk:
                    break
                own = {self.key(pk, first_sample): pk for pk in chunk}
                done_key = {self.key(pk, last): pk for pk in chunk}
                marks = ",".join("?" * len(chunk))
                done = {done_key[k] for (k,) in db.execute(
                    f"SELECT key FROM generations WHERE key IN ({marks})", list(done_key))}
                held = {own[k] for k, owner, expires in db.execute(
                    f"SELECT key, owner, expires FROM claims WHERE key IN ({marks})", list(own))
                    if owner != self.owner and expires > now and not _dead(owner)}
                answered.extend(pk for pk in chunk if pk in done)
                free = [pk for pk in chunk if pk not in done and pk not in held]
                free = free[:limit - len(got)]
                db.executemany("INSERT OR REPLACE INTO claims VALUES (?,?,?)",
                               [(self.key(pk, first_sample), self.owner, now + self.lease)
                                for pk in free])
                got.extend(free)
        if got:
            self._start_renewing()
        return got, answered

    def release(self, prompt_keys: Iterable[str], first_sample: int) -> None:
        """Drop this run's claims on ``prompt_keys`` (a failed prompt: others may ask it)."""
        claimed = [(self.key(pk, first_sample), self.owner) for pk in prompt_keys]
        if claimed:
            with self._using(write=True) as db:
                db.executemany("DELETE FROM claims WHERE key=? AND owner=?", claimed)

    def held_by_others(self) -> list[str]:
        """Owners of live claims other than this run (for telling the user who works)."""
        with self._using() as db:
            return [o for (o,) in db.execute(
                "SELECT DISTINCT owner FROM claims WHERE owner != ? AND expires > ?",
                (self.owner, time.time())) if not _dead(o)]

    def _start_renewing(self) -> None:
        if self._renewer is not None:
            return
        self._renewer = threading.Thread(target=self._renew, name="cellreasoner-cache-lease",
                                         daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Extend this run's claims every quarter lease until :meth:`close`."""
        while not self._stop.wait(self.lease / 4):
            try:
                with self._using(write=True) as db:
                    db.execute("UPDATE claims SET expires=? WHERE owner=?",
                               (time.time() + self.lease, self.owner))
            except InputError:
                return  # closed or broken: the main thread reports it; the claims expire

    # -- housekeeping ----------------------------------------------------------------------

    def count(self) -> int:
        """Number of stored samples for this backend, model and sampling."""
        with self._using() as db:
            return db.execute(
                "SELECT COUNT(*) FROM generations WHERE backend=? AND model=? AND sampling_key=?",
                (self.backend, self.model, self.sampling_key)).fetchone()[0]

    def _meta(self, text: str) -> dict:
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise self._broken(exc) from exc
        if not isinstance(meta, dict):
            raise self._broken(ValueError(f"a stored 'meta' is a {type(meta).__name__}"))
        return meta

    def close(self) -> None:
        """Drop this run's claims and close the database (idempotent)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("DELETE FROM claims WHERE owner=?", (self.owner,))
                except sqlite3.Error as exc:  # broken or locked: the claims expire on their own
                    log.debug("Could not drop the claims of %s in %s: %s", self.owner,
                              self.path, exc)
                self._db.close()
                self._db = None

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dead(owner: str) -> bool:
    """Whether a claim's owner is a process of this host that no longer exists (its claims
    need not wait for their lease; owners on other hosts sharing the file always do)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _json_default(obj):
    """numpy scalars/arrays in ``Generation.meta`` -> plain JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def open_cache(stack: contextlib.ExitStack, path: Path | None, backend,
               sampling: SamplingParams) -> GenerationCache | None:
    """The generation cache at ``path`` for ``backend`` and ``sampling`` (closed with
    ``stack``), or ``None`` without a path."""
    if path is None:
        return None
    cache = GenerationCache(path, backend.name, backend.model, sampling)
    stack.callback(cache.close)
    return cache
