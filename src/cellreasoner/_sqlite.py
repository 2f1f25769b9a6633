"""The one way cellreasoner opens its SQLite files (generation cache, LLM judge cache).

:func:`connect` creates the parent folder, opens the file in autocommit mode with a 30 s busy
timeout, switches it to WAL with ``synchronous=NORMAL`` (a commit costs microseconds and
survives a killed process; readers never block the writer) and creates the tables, checking that
a table that already exists has the expected columns. :func:`transaction` groups writes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Seconds a connection waits for another process's write lock before failing.
BUSY_TIMEOUT = 30.0

_TABLE = re.compile(r"\s*CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.I)


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def _check_schema(db: sqlite3.Connection, create_sql: str) -> None:
    """Raise :class:`sqlite3.DatabaseError` when an existing table lacks expected columns.

    The expected columns are those the statement creates in an empty in-memory database.
    """
    m = _TABLE.match(create_sql)
    if m is None:
        raise ValueError(f"not a CREATE TABLE IF NOT EXISTS statement: {create_sql[:80]!r}")
    table = m.group(1)
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(create_sql)
        expected = _columns(scratch, table)
    finally:
        scratch.close()
    have = set(_columns(db, table))
    missing = [c for c in expected if c not in have]
    if missing:
        raise sqlite3.DatabaseError(
            f"table '{table}' has another layout (no column(s) {', '.join(missing)}); "
            "it was written by something else"
        )


def _private(p: Path) -> None:
    """Missing parent folders ``0700``, the file (and its WAL/shm files) ``0600``: the cache
    holds every prompt and answer. SQLite gives the WAL and shm files the database file's mode."""
    from ._secrets import private_dir, private_file

    private_dir(p.parent, tighten=False)  # the cache root itself: resources.cache_dir()
    private_file(p)
    for side in ("-wal", "-shm", "-journal"):
        extra = p.with_name(p.name + side)
        if extra.exists():
            private_file(extra)


def connect(path: str | os.PathLike, schema: Sequence[str] = ()) -> sqlite3.Connection:
    """Open (creating when missing) a SQLite file for cellreasoner.

    Parameters
    ----------
    path
        The database file; ``~`` is expanded and missing parent folders are created
        (``0700``); the file is made ``0600``, whatever the umask.
    schema
        ``CREATE TABLE IF NOT EXISTS`` statements run on open; a table that already exists
        must have every column its statement names.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (``isolation_level=None``; group writes with :func:`transaction`),
        usable from several threads (callers serialise access), WAL journal.

    Raises
    ------
    sqlite3.DatabaseError
        The file is not a database, or a table has another layout.
    OSError
        The folder cannot be created.
    """
    p = Path(path).expanduser()
    _private(p)
    db = sqlite3.connect(p, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            db.execute(statement)
            _check_schema(db, statement)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception) on an autocommit
    connection from :func:`connect`."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
