"""The Ray engine (``engine="ray"``, ``--engine ray``) on a real local Ray cluster.

One cluster of two CPUs for the whole file (``ray.init(num_cpus=2)``); worker processes are
real, and so are the faults: a worker SIGKILLed while it answers a block, a CLI driver
SIGKILLed mid-run, an OpenAI-compatible server on 127.0.0.1 counting every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import synthetic
from conftest import REPO_ROOT
from fault_server import LABEL, FaultServer, one_gene_cells

from cellreasoner.annotation import annotate
from cellreasoner.distributed.manifest import RunManifest

ray = pytest.importorskip("ray", reason="the Ray engine's tests need the 'ray' extra")
#: one pytest-xdist worker runs every test on the one Ray cluster (its fault tests kill Ray
#: workers found by name: a second cluster's would be fair game)
pytestmark = pytest.mark.xdist_group("ray")
psutil = pytest.importorskip("psutil")


def _same_answers(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert list(table.index) == list(reference.index)  # every cell once, in order
    pd.testing.assert_frame_equal(table, reference)


@pytest.mark.slow
def test_200k_cells_same_labels_as_single_process(ray_cluster, tmp_path):
    """200k synthetic cells, built-in reasoner: Ray gives the single process's answers."""
    path = synthetic.write_h5ad(tmp_path / "200k.h5ad", 200_000, nnz=300, seed=1)
    t0 = time.perf_counter()
    local = annotate(str(path), workers=1, progress=False)  # one process
    t1 = time.perf_counter()
    dist = annotate(str(path), engine="ray", progress=False)
    t2 = time.perf_counter()
    print(f"200k cells: single process {t1 - t0:.1f} s, Ray (2 workers) {t2 - t1:.1f} s")
    assert dist.provenance["engine"] == "ray" and dist.provenance["workers"] == 2
    _same_answers(dist.table, local.table)
    assert local.table["label"].nunique() >= 8  # a real mix of cell types, not one answer


def test_spaced_pass_one_same_answers_on_ray(ray_cluster, cells_12k):
    """Data larger than ``refine_sample_from``: Ray's tasks score the same spaced windows as
    the single process (its own chunk size), so the answers are the single process's."""
    from cellreasoner.backends.builtin import BuiltinBackend

    def run(**kw):
        return annotate(str(cells_12k), backend=BuiltinBackend(refine_sample_from=3_000),
                        progress=False, **kw).table

    _same_answers(run(engine="ray", chunk_size=2_000), run(workers=1))


def _ray_workers_running(task: str) -> list[psutil.Process]:
    """Worker processes whose title says they run ``task`` now (Ray names them ray::TASK)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith(f"ray::{task}"):
            out.append(proc)
    return out


def _killer(task: str) -> tuple[threading.Thread, list[int]]:
    """A thread that SIGKILLs the first Ray worker seen running ``task`` (within 120 s), and
    the list it records that worker's PID in."""
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for proc in _ray_workers_running(task):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                return
            time.sleep(0.02)

    return threading.Thread(target=kill_one), killed


def test_worker_killed_mid_run_every_cell_once(ray_cluster, cells_12k, cells_12k_table, tmp_path):
    """SIGKILL a worker while it answers a block: Ray retries the block, each block is
    recorded once, and the answers equal the single process's."""
    manifest = tmp_path / "manifest"
    killer, killed = _killer("_answer_task")
    killer.start()
    result = annotate(str(cells_12k), engine="ray", chunk_size=2_000, manifest=manifest,
                      progress=False)
    killer.join()
    assert killed, "no worker was seen answering a block"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    _same_answers(result.table, cells_12k_table)
    entries = json.loads((manifest / "manifest.json").read_text())["blocks"]
    assert sorted(entries) == sorted(f"cells {lo}-{lo + 2000}" for lo in range(0, 12_000, 2000))
    assert sum(e["rows"] for e in entries.values()) == 12_000
    files = [f for f in (manifest / "blocks").iterdir() if not f.name.startswith(".")]
    assert len(files) == 6


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "cellreasoner.cli", "annotate", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kw)


def test_driver_killed_rerun_skips_finished_blocks(ray_cluster, cells_12k, cells_12k_table,
                                                   tmp_path):
    """A CLI driver SIGKILLed mid-run; the same command again reads the finished blocks back
    from the manifest (counted) and answers only the rest."""
    out = tmp_path / "cells.parquet"
    args = [str(cells_12k), "-o", str(out), "--engine", "ray", "--address", ray_cluster,
            "--chunk-size", "1500", "--no-progress"]
    manifest = out.with_name(out.name + ".manifest") / "manifest.json"
    first = _cli(args)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None:
        if manifest.is_file() and len(json.loads(manifest.read_text())["blocks"]) >= 2:
            break
        time.sleep(0.02)
    assert first.poll() is None, f"the run ended before it could be killed: {first.stderr}"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    first.stderr.close()
    first.stdout.close()
    assert not out.exists()
    finished = len(json.loads(manifest.read_text())["blocks"])
    assert 2 <= finished < 8

    again = _cli(args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"8 block(s), {finished} read back from an earlier run" in err
    table = pd.read_parquet(out)
    assert table["cell_name"].tolist() == cells_12k_table.index.tolist()  # every cell once
    np.testing.assert_array_equal(table["label"].to_numpy(dtype=str),
                                  cells_12k_table["label"].to_numpy(dtype=str))


def test_openai_through_ray_asks_every_prompt_once(ray_cluster):
    """Model backend replicas (two workers, two requests in flight each) against a real local
    server: every unique prompt is asked once, and never more than 2 x 2 at a time."""
    genes = [f"GENE{i}" for i in range(40)]
    adata = one_gene_cells(genes)
    adata = adata[np.repeat(np.arange(40), 3)].copy()  # each prompt three times
    adata.obs_names_make_unique()
    with FaultServer("ok", delay_s=0.05) as server:
        result = annotate(adata, "openai", model="m", gene_list=genes, engine="ray",
                          batch_size=7, backend_options={"base_url": server.url,
                                                         "concurrency": 2}, progress=False)
    assert sorted(server.asked) == sorted(genes)
    assert set(server.asked.values()) == {1}
    assert 1 <= server.max_in_flight <= 4
    assert (result.table["label"] == LABEL).all()
    assert result.provenance["unique_prompts"] == 40
    assert result.provenance["prompts_asked"] == 40


def test_replica_killed_mid_block_is_restarted_and_recorded_once(ray_cluster, tmp_path):
    """SIGKILL a backend replica while it answers a block: Ray restarts it and asks the block
    again; every prompt gets its answer and each block is recorded once."""
    genes = [f"GENE{i}" for i in range(24)]
    killer, killed = _killer("_Replica.generate")
    with FaultServer("ok", delay_s=0.15) as server:
        killer.start()
        result = annotate(one_gene_cells(genes), "openai", model="m", gene_list=genes,
                          engine="ray", batch_size=4, manifest=tmp_path / "m",
                          backend_options={"base_url": server.url, "concurrency": 1},
                          progress=False)
        killer.join()
    assert killed, "no replica was seen answering a block"
    assert sorted(server.asked) == sorted(genes)
    assert sum(server.asked.values()) - len(genes) <= 4  # at most the killed block again
    assert (result.table["label"] == LABEL).all()
    entries = json.loads((tmp_path / "m" / "manifest.json").read_text())["blocks"]
    assert len(entries) == 6 and sum(e["rows"] for e in entries.values()) == 24


def test_cli_ray_options_need_the_ray_engine(capsys, tmp_path):
    from cellreasoner.cli import main

    rc = main(["annotate", "pbmc68k_reduced", "-o", str(tmp_path / "x.parquet"),
               "--address", "auto", "--manifest", str(tmp_path / "m")])
    assert rc == 2
    assert "--address, --manifest only apply to --engine ray" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_cluster_and_hybrid_modes_match_local(ray_cluster, pbmc68k):
    """Cluster mode (one prompt per cluster, answered by replicas) and hybrid mode (per-cell
    chunks on workers, cluster majorities on the driver) give the local answers."""
    for mode in ("cluster", "hybrid"):
        local = annotate(pbmc68k.copy(), mode=mode, by="bulk_labels", progress=False)
        dist = annotate(pbmc68k.copy(), mode=mode, by="bulk_labels", engine="ray",
                        workers=1, chunk_size=200, progress=False)
        _same_answers(dist.table, local.table)


def test_manifest_records_a_block_once_and_keys_its_settings(tmp_path):
    frame = pd.DataFrame({"label": ["B cell", "NK cell"]})
    m = RunManifest(tmp_path / "m", {"input": "a.h5ad", "n": 1})
    m.record("cells 0-2", frame)
    with pytest.raises(RuntimeError, match="already recorded"):
        m.record("cells 0-2", frame)
    again = RunManifest(tmp_path / "m", {"input": "a.h5ad", "n": 1})
    assert again.finished("cells 0-2")
    pd.testing.assert_frame_equal(again.load("cells 0-2"), frame)
    assert again.skipped == 1
    other = RunManifest(tmp_path / "m", {"input": "a.h5ad", "n": 2})  # other settings
    assert not other.finished("cells 0-2")
    assert "a.h5ad" not in (tmp_path / "m" / "manifest.json").read_text()  # only a hash


def test_vllm_processor_config_from_our_settings():
    from cellreasoner.distributed.llm import vllm_processor_config, vllm_processor_kwargs

    kw = vllm_processor_kwargs("guangshuo/CellReasoner-7B", replicas=4, batch_size=32)
    assert kw["model_source"] == "guangshuo/CellReasoner-7B"
    assert kw["concurrency"] == 4 and kw["batch_size"] == 32
    assert kw["engine_kwargs"]["enable_prefix_caching"] is True
    assert kw["engine_kwargs"]["max_model_len"] == 8192 + 4096
    assert kw["chat_template_stage"] is False  # our chat rendering, not Ray's
    pytest.importorskip("aiohttp")
    config = vllm_processor_config("guangshuo/CellReasoner-7B", replicas=4, batch_size=32)
    assert config.model_source == "guangshuo/CellReasoner-7B"
    assert config.concurrency == 4
    assert config.engine_kwargs["enable_prefix_caching"] is True


def test_prompt_renderer_matches_the_vllm_backend(tmp_path, gene_list_path):
    """The Ray Data preprocess step renders each prompt as the vllm backend does."""
    pytest.importorskip("transformers")
    from tiny_model import build_tokenizer

    from cellreasoner.backends.vllm import prompt_texts, sampling_kwargs
    from cellreasoner.distributed.llm import PromptRenderer, prompt_rows
    from cellreasoner.prompts import Prompt, SamplingParams

    tok = build_tokenizer(["CD3D", "CD3E", "IL7R", "MS4A1", "CD79A"], vocab_size=1000)
    tok.save_pretrained(tmp_path / "tok")
    sampling = SamplingParams.for_mode(True)
    prompts = [Prompt("Annotate the cell.", "CD3D, CD3E, IL7R", True),
               Prompt("Annotate the cell.", "MS4A1, CD79A", False)]
    render = PromptRenderer(str(tmp_path / "tok"), sampling)
    rows = [render(r) for r in prompt_rows(prompts)]
    assert [r["prompt"] for r in rows] == prompt_texts(tok, prompts)
    assert rows[0]["prompt"].endswith("<think> ")
    assert rows[0]["sampling_params"] == sampling_kwargs(sampling)
    assert rows[1]["key"] == prompts[1].key()


def test_engine_errors_are_one_clear_message(pbmc68k, monkeypatch):
    from cellreasoner.errors import InputError, MissingDependencyError

    with pytest.raises(InputError, match="engine must be one of local, ray"):
        annotate(pbmc68k, engine="spark", progress=False)
    with pytest.raises(InputError, match="--workers"):
        annotate(pbmc68k, engine="ray", workers=0, progress=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'cellreasoner\[ray\]'"):
        annotate(pbmc68k, engine="ray", progress=False)


def test_cluster_marker_statistics_as_ray_tasks(ray_cluster, cells_12k, pbmc68k):
    """Cluster mode's group statistics (the markers of each cluster's prompt) computed as
    Ray tasks over chunks equal the single process's: from a file the workers read, and from
    an AnnData in memory whose chunks the driver ships."""
    from cellreasoner.annotation.clusters import group_statistics, rank_markers
    from cellreasoner.distributed import connect
    from cellreasoner.matrix import from_anndata, from_h5ad

    file_source = from_h5ad(cells_12k)
    groups = pd.Series(np.arange(file_source.n_obs) % 7).astype(str)
    memory = from_anndata(pbmc68k, use_raw=True)
    by = pbmc68k.obs["bulk_labels"].astype(str).reset_index(drop=True)
    with connect(workers=2) as cluster:
        for source, g in ((file_source, groups), (memory, by)):
            here = group_statistics(source, g)
            there = group_statistics(source, g, cluster)
            assert here[0] == there[0]
            for a, b in zip(here[1:], there[1:], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-8)
        genes = [str(x) for x in memory.var_names]
        assert rank_markers(memory, by, genes, cluster=cluster) == rank_markers(memory, by, genes)


LOCAL_CLUSTER = """
import json, os, psutil
from cellreasoner.distributed import connect

def getpid():
    return os.getpid()

with connect(workers=2) as c:
    ray = c.ray
    pid = ray.remote(num_cpus=1)(getpid)
    pids = {ray.get(pid.remote()) for _ in range(4)}
    processes = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    cpus, store = ray.cluster_resources()["CPU"], ray.cluster_resources()["object_store_memory"]
left = [p.pid for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
print("RESULT " + json.dumps({"started": c.started_here, "cpus": cpus, "store": store,
                              "workers": len(pids), "processes": processes, "left": left}))
"""


def _local_cluster_run(prelude: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", prelude + LOCAL_CLUSTER], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")},
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.split("RESULT ")[-1])


#: a Ray release whose cluster utilities take other options
OLD_CLUSTER_UTILS = """
import ray.cluster_utils

class Cluster:
    def __init__(self, **kwargs):
        raise TypeError("unexpected keyword argument 'no_monitor'")

ray.cluster_utils.Cluster = Cluster
"""


def test_local_cluster_falls_back_to_ray_init():
    """Where Ray's cluster utilities do not take the lean options, ``ray.init`` starts the
    usual local cluster (its monitors included) and the run still stops it."""
    got = _local_cluster_run(OLD_CLUSTER_UTILS)
    assert got["started"] and got["cpus"] == 2 and got["workers"] >= 1
    assert [p for p in got["processes"] if "monitor.py" in p]
    assert got["left"] == []


def test_run_starts_its_own_lean_local_cluster_and_stops_it():
    """With no cluster running, a run starts one of ``workers`` CPUs without the autoscaler's
    monitor or the log monitor, with an object store sized as ``ray.init``'s, and leaves no
    process behind (a fresh interpreter: this file's cluster is already up here)."""
    from cellreasoner.distributed.cluster import object_store_bytes

    got = _local_cluster_run()
    assert got["started"] and got["cpus"] == 2 and got["workers"] >= 1
    assert not [p for p in got["processes"] if "monitor.py" in p], got["processes"]
    assert any("raylet" in p for p in got["processes"])
    # Ray's default share of the memory available (it moves as other tests run)
    assert got["store"] > 0.5 * object_store_bytes()
    assert got["left"] == []


RAY_ADDRESS_RUN = """
import json
from cellreasoner.distributed import connect
from cellreasoner.errors import InputError
try:
    with connect() as c:
        got = {"started": c.started_here, "cpus": c.ray.cluster_resources()["CPU"]}
except InputError as exc:
    got = {"error": str(exc)}
print("RESULT " + json.dumps(got))
"""


def _connect_with(ray_address: str, **extra: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "RAY_ADDRESS": ray_address,
           **extra}
    env = {k: v for k, v in env.items() if v is not None}
    done = subprocess.run([sys.executable, "-c", RAY_ADDRESS_RUN], capture_output=True,
                          text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.split("RESULT ")[-1])


def test_ray_address_names_the_cluster_when_no_address_is_given(ray_cluster):
    """``$RAY_ADDRESS`` is honoured as ``ray.init()`` honours it: the run joins that cluster
    (it starts none of its own), and one it cannot reach is a clear error that names the
    variable and shows no password."""
    import socket

    assert _connect_with(ray_cluster) == {"started": False, "cpus": 2.0}
    with socket.socket() as listening:  # something answers there, but Ray refuses the driver
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        port = listening.getsockname()[1]
        err = _connect_with(f"user:hunter2@127.0.0.1:{port}", RAY_AUTH_MODE=None)["error"]
        assert err.startswith("RAY_ADDRESS ") and "cannot connect" in err
        assert "hunter2" not in err
        # a cluster that wants a token (`ray start`'s default from Ray 2.59): how to send it
        assert "RAY_AUTH_MODE=token" in err and "--address auto" in err
        chosen = _connect_with(f"user:pw@127.0.0.1:{port}", RAY_AUTH_MODE="disabled")["error"]
        assert "cannot connect" in chosen and "RAY_AUTH_MODE" not in chosen


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "user:pw@127.0.0.1:1"])
def test_a_closed_port_is_a_clear_error_at_once(address):
    """An address where nothing listens is one clear error before Ray is asked (``ray.init``
    itself retries a closed GCS port for minutes): the address (its password blanked) and the
    reason; no token hint, which is for a cluster that answers."""
    err = _connect_with(address, RAY_AUTH_MODE=None)["error"]
    assert "cannot connect" in err and "nothing answers at 127.0.0.1:1" in err
    assert "Connection refused" in err and "pw" not in err and "RAY_AUTH_MODE" not in err


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_another_service_at_the_address_is_a_clear_error(reply):
    """A port where something other than Ray listens (one that hangs up, an HTTP/1 server
    such as a dashboard) is one clear error (Ray itself retries it for minutes): the first
    answer to an HTTP/2 greeting is not a gRPC server's SETTINGS frame. A real cluster's GCS
    passes the same check (``test_ray_address_names_the_cluster_when_no_address_is_given``)."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(reply)

        threading.Thread(target=serve, daemon=True).start()
        err = _connect_with(f"127.0.0.1:{port}", RAY_AUTH_MODE=None)["error"]
    assert f"the service at 127.0.0.1:{port} is not a Ray cluster's" in err
    assert "GCS port" in err
