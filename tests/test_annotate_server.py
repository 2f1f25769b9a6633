"""annotate() against a REAL OpenAI-compatible server (`transformers serve`, tiny Qwen2).

Requests are counted from the server's own access log, so "the model was not asked again" is
checked on the server side, not inferred from our counters. The server is started with
``tiny_model.serve_transformers`` at log level info, which writes that access log.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from tiny_model import free_port

from cellreasoner.annotation import annotate
from cellreasoner.cli import main
from cellreasoner.errors import BackendError

POST = '"POST /v1/chat/completions HTTP/1.1" 200'


@contextmanager
def serve(model_dir: str | Path, workdir: Path, timeout: float = 120.0,
          extra_args: tuple[str, ...] = ()):
    """`transformers serve` with its access log on (``--log-level info``)."""
    from tiny_model import serve_transformers

    with serve_transformers(model_dir, workdir, log_level="info", timeout=timeout,
                            extra_args=extra_args) as served:
        yield served


def requests_served(log: Path) -> int:
    """Completed chat requests in the server's access log."""
    return log.read_text(errors="replace").count(POST)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, gene_list_path) -> str:
    pytest.importorskip("torch")
    from tiny_model import build_tiny_qwen2

    genes = [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()]
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny_srv") / "qwen2", genes))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    with serve(tiny_dir, tmp_path_factory.mktemp("serve")) as (url, log):
        yield url, log


@pytest.fixture
def cells(pbmc68k) -> ad.AnnData:
    full = pbmc68k.raw.to_adata()
    return full


def _cached(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


def test_cache_prevents_asking_the_server_again(server, tiny_dir, cells, tmp_path):
    url, log = server
    sub = cells[:12].copy()
    opts = {"base_url": url, "concurrency": 4}
    before = requests_served(log)
    res = annotate(sub, "openai", model=tiny_dir, backend_options=opts, max_new_tokens=4,
                   temperature=1.0, cache=tmp_path / "c.sqlite", progress=False)
    first = requests_served(log) - before
    assert first == res.provenance["model_calls"] == 12
    assert res.provenance["base_url"] == url and res.provenance["concurrency"] == 4
    again = annotate(sub, "openai", model=tiny_dir, backend_options=opts, max_new_tokens=4,
                     temperature=1.0, cache=tmp_path / "c.sqlite", progress=False, copy=True)
    assert requests_served(log) - before == 12  # not one more request
    assert again.provenance["cache_hits"] == 12
    assert (again.table["response"] == res.table["response"]).all()


def test_killed_run_resumes_without_repeating_finished_prompts(server, tiny_dir, cells,
                                                               tmp_path):
    """SIGINT, then SIGKILL, then a full run: every prompt is generated once (only a request
    in flight at a kill can be asked twice) and every cell is annotated once."""
    url, log = server
    data = tmp_path / "in.h5ad"
    cells[:40].copy().write_h5ad(data)
    cache, out = tmp_path / "resume.sqlite", tmp_path / "out.h5ad"
    cmd = [sys.executable, "-m", "cellreasoner.cli", "annotate", str(data), "-o", str(out),
           "--backend", "openai", "--model", tiny_dir, "--base-url", url, "--concurrency", "1",
           "--max-new-tokens", "24", "--temperature", "1", "--cache", str(cache),
           "--prompt-style", "cellreasoner", "--no-progress"]
    before = requests_served(log)
    kills = 0
    for sig, target in ((signal.SIGINT, 8), (signal.SIGKILL, 20)):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while _cached(cache) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        assert proc.poll() is None, f"run finished before the kill: {proc.communicate()}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        kills += 1
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert "run the same command to resume" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not out.exists()  # no half-written output
    done_before = _cached(cache)
    assert 20 <= done_before < 40
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert (f"40 cells, 40 unique prompts, {40 - done_before} model calls, "
            f"{done_before} cache hits") in finished.stderr
    # each prompt is stored once; the server answered each at most once more per kill
    assert _cached(cache) == 40
    served = requests_served(log) - before
    assert 40 <= served <= 40 + kills
    back = ad.read_h5ad(out)
    assert back.n_obs == 40 and back.obs_names.is_unique
    assert back.obs["cellreasoner_response"].str.len().gt(0).all()
    assert back.uns["cellreasoner"]["cache_hits"] == done_before


def test_openai_path_dedupes_and_self_consistency(server, tiny_dir, cells, tmp_path):
    url, log = server
    sub = cells[:5].copy()
    dup = ad.concat([sub, sub], index_unique="-")
    before = requests_served(log)
    res = annotate(dup, "openai", model=tiny_dir, n=3, max_new_tokens=3, temperature=1.0,
                   backend_options={"base_url": url, "concurrency": 8}, cache=False,
                   progress=False)
    # transformers serve ignores "n": the backend tops up, one request per sample
    assert requests_served(log) - before == 5 * 3
    assert res.provenance["unique_prompts"] == 5 and res.provenance["generations"] == 15
    assert set(res.table["confidence"].round(4)) <= {round(1 / 3, 4), round(2 / 3, 4), 1.0}
    labels = dup.obs["cellreasoner_label"].to_numpy()
    assert (labels[:5] == labels[5:]).all()


def test_server_down_is_a_clear_error(cells, tmp_path, capsys, tiny_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="Cannot reach the model server"):
        annotate(cells[:3].copy(), "openai", model=tiny_dir, backend_options={"base_url": url},
                 cache=tmp_path / "c.sqlite", progress=False)
    src = tmp_path / "in.h5ad"
    cells[:3].copy().write_h5ad(src)
    rc = main(["annotate", str(src), "-o", str(tmp_path / "o.h5ad"), "--backend", "openai",
               "--model", tiny_dir, "--base-url", url, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: Cannot reach the model server") and "Traceback" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_cli_csv_only_output(server, tiny_dir, cells, tmp_path):
    url, _ = server
    src = tmp_path / "in.h5ad"
    cells[:4].copy().write_h5ad(src)
    out = tmp_path / "cells.csv"
    rc = main(["annotate", str(src), "-o", str(out), "--backend", "openai", "--model", tiny_dir,
               "--base-url", url, "--max-new-tokens", "3", "--label-column", "bulk_labels",
               "--no-cache", "--no-progress"])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["cell_name", "response", "labels"]
    assert len(table) == 4
