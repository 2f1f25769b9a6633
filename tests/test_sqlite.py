"""The one SQLite helper shared by the generation cache and the LLM judge cache."""

from __future__ import annotations

import sqlite3

import pytest

from cellreasoner._sqlite import connect, transaction
from cellreasoner.annotation.cache import GenerationCache
from cellreasoner.errors import InputError
from cellreasoner.evaluation import LLMJudge
from cellreasoner.prompts import SamplingParams


def test_connect_creates_folder_wal_and_table(tmp_path):
    path = tmp_path / "deep" / "er" / "x.sqlite"
    db = connect(path, ["CREATE TABLE IF NOT EXISTS t (a TEXT PRIMARY KEY, b REAL)"])
    assert path.is_file()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with transaction(db):
        db.execute("INSERT INTO t VALUES ('x', 1.0)")
    with pytest.raises(RuntimeError), transaction(db):
        db.execute("INSERT INTO t VALUES ('y', 2.0)")
        raise RuntimeError("rolled back")
    assert db.execute("SELECT a FROM t").fetchall() == [("x",)]
    db.close()


def test_a_table_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE generations (key TEXT, value TEXT)")
    other.commit()
    other.close()
    with pytest.raises(InputError, match="another layout"):
        GenerationCache(path, "b", "m", SamplingParams())


def test_judge_cache_opens_like_the_generation_cache(tmp_path):
    class _Backend:
        def describe(self):
            return {"backend": "fake", "model": "m"}

    path = tmp_path / "sub" / "judge.sqlite"
    judge = LLMJudge(_Backend(), cache_path=path)
    assert judge._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    judge.close()
    (tmp_path / "notes.txt").write_text("not a database\n" * 200)
    with pytest.raises(InputError, match="judge cache"):
        LLMJudge(_Backend(), cache_path=tmp_path / "notes.txt")
