"""The persistent SQLite generation cache: keys, persistence, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from cellreasoner.annotation.cache import GenerationCache, sampling_key
from cellreasoner.backends import Generation
from cellreasoner.errors import InputError
from cellreasoner.prompts import SamplingParams


def test_roundtrip_and_wal(tmp_path):
    sp = SamplingParams(n=2)
    path = tmp_path / "sub" / "c.sqlite"
    with GenerationCache(path, "openai", "m1", sp) as cache:
        cache.put("p1", [Generation("A", "why A", {"confidence": 0.5}), Generation("B")])
        got = cache.get_many(["p1", "p2"], 2)
        assert set(got) == {"p1"}
        assert [g.text for g in got["p1"]] == ["A", "B"]
        assert got["p1"][0].reasoning == "why A" and got["p1"][0].meta == {"confidence": 0.5}
        assert got["p1"][1].reasoning is None
        assert cache.hits == 2 and cache.writes == 2
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_keys_separate_model_sampling_and_sample(tmp_path):
    path = tmp_path / "c.sqlite"
    base = SamplingParams()
    with GenerationCache(path, "openai", "m1", base) as c:
        c.put("p", [Generation("m1 answer")])
    with GenerationCache(path, "openai", "m2", base) as c:
        assert c.get_many(["p"], 1) == {}
    with GenerationCache(path, "transformers", "m1", base) as c:
        assert c.get_many(["p"], 1) == {}
    with GenerationCache(path, "openai", "m1", SamplingParams(temperature=0.7)) as c:
        assert c.get_many(["p"], 1) == {}
    # n is not part of the key: sample 0 is reused when more samples are asked for
    with GenerationCache(path, "openai", "m1", SamplingParams(n=3)) as c:
        got = c.get_many(["p"], 3)["p"]
        assert got[0].text == "m1 answer" and got[1] is None and got[2] is None
    assert sampling_key(SamplingParams(n=1)) == sampling_key(SamplingParams(n=5))
    assert sampling_key(SamplingParams(seed=1)) != sampling_key(SamplingParams(seed=2))


def test_each_put_is_durable_across_a_killed_process(tmp_path):
    """A process killed with SIGKILL right after put() loses nothing it stored."""
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from cellreasoner.backends import Generation
        from cellreasoner.annotation.cache import GenerationCache
        from cellreasoner.prompts import SamplingParams
        c = GenerationCache({str(path)!r}, "b", "m", SamplingParams())
        for i in range(50):
            c.put(f"p{{i}}", [Generation(f"label {{i}}")])
        print("stored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "stored" in proc.stdout
    with GenerationCache(path, "b", "m", SamplingParams()) as c:
        got = c.get_many([f"p{i}" for i in range(50)], 1)
        assert len(got) == 50
        assert got["p49"][0].text == "label 49"
        assert c.count() == 50


def test_numpy_meta_is_stored_as_json(tmp_path):
    np = pytest.importorskip("numpy")
    with GenerationCache(tmp_path / "c.sqlite", "b", "m", SamplingParams()) as c:
        c.put("p", [Generation("x", meta={"confidence": np.float32(0.25), "ids": np.arange(2)})])
        assert c.get_many(["p"], 1)["p"][0].meta == {"confidence": 0.25, "ids": [0, 1]}


def test_unusable_path_is_a_clear_error(tmp_path):
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("this is not a database\n" * 200)
    with pytest.raises(InputError, match="annotation cache"):
        GenerationCache(not_a_db, "b", "m", SamplingParams())
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(InputError, match="--no-cache"):
            GenerationCache(ro / "c.sqlite", "b", "m", SamplingParams())
