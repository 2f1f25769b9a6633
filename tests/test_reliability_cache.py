"""The prompt cache under faults and concurrency: real files, real subprocesses, kill -9.

Several runs sharing one cache file share the work through claims (owner + lease): against
one real local server that counts requests per prompt, each prompt is asked once, except those
in flight in a run killed with SIGKILL, whose lease expires so that another run asks them. A
broken cache file is one clear error naming it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import pytest
from fault_server import LABEL, FaultServer, one_gene_cells

from cellreasoner.annotation.cache import GenerationCache
from cellreasoner.backends import Generation
from cellreasoner.prompts import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def genes(gene_list_path) -> list[str]:
    return [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()][:48]


@pytest.fixture
def inputs(genes, tmp_path) -> tuple[Path, Path]:
    """(an .h5ad of one-gene cells, its gene-list file)."""
    src, gene_file = tmp_path / "in.h5ad", tmp_path / "genes.txt"
    one_gene_cells(genes).write_h5ad(src)
    gene_file.write_text("\n".join(genes) + "\n")
    return src, gene_file


def _cmd(src: Path, gene_file: Path, out: Path, url: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "cellreasoner.cli", "annotate", str(src), "-o", str(out),
            "--backend", "openai", "--model", "m", "--base-url", url, "--gene-list",
            str(gene_file), "--concurrency", "2", "--batch-size", "4", "--cache", str(cache),
            "--no-progress"]


def _stored(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.parametrize("runs", [2, 4])
def test_concurrent_runs_on_one_cache_ask_each_prompt_once(runs, genes, inputs, tmp_path):
    """Before claims, every run asked every prompt the others had not finished yet."""
    src, gene_file = inputs
    cache = tmp_path / "shared.sqlite"
    with FaultServer("ok", delay_s=0.25) as server:
        procs = [subprocess.Popen(_cmd(src, gene_file, tmp_path / f"o{k}.h5ad", server.url,
                                       cache), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for k in range(runs)]
        errs = [p.communicate(timeout=240)[1] for p in procs]
        asked = dict(server.asked)
    assert [p.returncode for p in procs] == [0] * runs, errs
    assert len(asked) == len(genes) and set(asked.values()) == {1}  # each asked once
    calls, shared = [], []
    for k in range(runs):
        back = ad.read_h5ad(tmp_path / f"o{k}.h5ad")
        assert back.n_obs == len(genes)  # no cell lost
        assert set(back.obs["cellreasoner_label"].astype(str)) == {LABEL}
        calls.append(back.uns["cellreasoner"]["model_calls"])
        shared.append(back.uns["cellreasoner"].get("shared_prompts", 0))
    assert sum(calls) == len(genes) and sum(c > 0 for c in calls) >= 2  # the work was shared
    # The run that looked in the cache first found it empty, so every answer another run asked
    # reached it through the shared cache while it ran (whether it also logged waiting on a
    # claim depends on timing, so the count is what is checked, not the log line).
    assert max(shared) >= min(c for c in calls if c > 0)


def test_a_killed_runs_claims_expire_and_only_its_in_flight_prompts_are_asked_twice(
        genes, inputs, tmp_path):
    src, gene_file = inputs
    cache = tmp_path / "shared.sqlite"
    with FaultServer("ok", delay_s=0.3) as server:
        victim = subprocess.Popen(_cmd(src, gene_file, tmp_path / "a.h5ad", server.url, cache),
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        other = subprocess.Popen(_cmd(src, gene_file, tmp_path / "b.h5ad", server.url, cache),
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        deadline = time.monotonic() + 120
        while _stored(cache) < 8:
            assert time.monotonic() < deadline and victim.poll() is None, "no progress"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        killed_at = time.monotonic()
        _, err = other.communicate(timeout=240)
        waited = time.monotonic() - killed_at
        assert other.returncode == 0, err
        twice = server.asked_twice()
        total = sum(server.asked.values())
        # the rerun of the killed command finds everything in the cache
        rerun = subprocess.run(_cmd(src, gene_file, tmp_path / "a.h5ad", server.url, cache),
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert sum(server.asked.values()) == total
    assert victim.returncode == -signal.SIGKILL
    assert twice <= 2 and total == len(genes) + twice  # only the victim's in-flight requests
    assert waited < 60  # the dead owner's lease (10 s) expired; nothing waited forever
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    assert back.n_obs == len(genes) and set(back.obs["cellreasoner_label"].astype(str)) == {LABEL}
    assert rerun.returncode == 0, rerun.stderr
    assert f"0 model calls, {len(genes)} cache hits" in rerun.stderr


def test_a_dead_owners_claims_expire_and_a_live_owner_keeps_its_own(tmp_path):
    path = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        from cellreasoner.annotation.cache import GenerationCache
        from cellreasoner.prompts import SamplingParams
        c = GenerationCache({str(path)!r}, "b", "m", SamplingParams(), lease=60)
        print(c.claim(["p1", "p2"], 0, 10), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == -signal.SIGKILL and "p2" in proc.stdout, proc.stderr
    with GenerationCache(path, "b", "m", SamplingParams(), lease=0.8) as live:
        # a killed process of this host: its claims go at once, though its lease runs 60 s
        assert live.claim(["p1"], 0, 10) == (["p1"], [])
        # an owner on another host sharing the file: only its lease tells
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO claims VALUES (?, ?, ?)",
                       (live.key("p3", 0), "elsewhere:1:abcd", time.time() + 1.5))
        assert live.claim(["p2", "p3"], 0, 10) == (["p2"], [])
        time.sleep(1.6)
        assert live.claim(["p3", "p4"], 0, 1) == (["p3"], [])  # expired: ours now
        with GenerationCache(path, "b", "m", SamplingParams()) as rival:
            time.sleep(2.0)  # > live's lease: renewed in the background meanwhile
            assert rival.claim(["p1", "p2", "p3", "p4"], 0, 10) == (["p4"], [])
            assert rival.held_by_others() == [live.owner]
            live.put("p1", [Generation("B cell")])  # an answer drops its claim ...
            live.release(["p2"], 0)  # ... and so does a failure
            assert rival.claim(["p1", "p2"], 0, 10) == (["p2"], ["p1"])  # p1 is answered
    with GenerationCache(path, "b", "m", SamplingParams()) as after:
        assert after.held_by_others() == []  # closed runs leave no claims behind


def _corrupt_pages(path: Path) -> None:
    with GenerationCache(path, "openai", "m", SamplingParams()) as c:
        c.put_many([(f"p{i}", 0, [Generation("B cell " * 20)]) for i in range(3000)])
    with open(path, "r+b") as fh:
        fh.seek(4096 * 3)
        fh.write(os.urandom(4096 * 20))


def _foreign_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE claims (id INTEGER, who TEXT)")
    db.commit()
    db.close()


def _not_a_database(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))


@pytest.mark.parametrize("damage", [_corrupt_pages, _foreign_schema, _not_a_database])
def test_a_broken_cache_file_is_one_clear_error_naming_it(damage, genes, inputs, tmp_path):
    """'database disk image is malformed' used to surface as a sqlite3 traceback."""
    src, gene_file = inputs
    cache = tmp_path / "broken.sqlite"
    damage(cache)
    with FaultServer("ok") as server:
        proc = subprocess.run(_cmd(src, gene_file, tmp_path / "o.h5ad", server.url, cache),
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert last.startswith(f"error: Cannot use {cache} as the annotation cache")
        assert "Delete that file" in last and "--no-cache" in last
        assert not (tmp_path / "o.h5ad").exists()
        if damage is not _corrupt_pages:
            return
        # and the way out works
        cmd = _cmd(src, gene_file, tmp_path / "o.h5ad", server.url, cache)
        cmd[cmd.index("--cache"):cmd.index("--cache") + 2] = ["--no-cache"]
        assert subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120).returncode == 0
