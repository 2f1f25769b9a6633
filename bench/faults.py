"""Benchmark: the fault campaign. Every case should end in a clear error or a correct result.

Run from the project root (needs ../shared for the gene list, or $CELLREASONER_GENE_LIST)::

    python bench/faults.py [--cells 16]

Each case runs the real ``cellreasoner annotate`` command in a subprocess and is classified:

- ``correct``: exit 0 and every cell carries the right label, or is "Unknown" with the failure
  flag that says why (a prompt the server never answered well, an answer that is not a label);
- ``clear error``: exit != 0 and stderr ends in one short ``error:`` line, no traceback;
- ``traceback``: a Python traceback reached the user;
- ``silent garbage``: exit 0 but cells are missing, or labelled wrongly without a flag.

Part 1, faults from a model server (``tests/fault_server.py``: a real HTTP server on
127.0.0.1): each fault once per prompt (``transient``: retried, must come out correct) and on
every request (``always``: a clear error, or the prompt recorded as failed). Part 2, bad input
files (builtin backend, no server). Part 3, 1, 2 and 4 concurrent runs on one cache against
one server that counts requests per prompt, and a run killed with SIGKILL beside another.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

#: Cases run at once in parts 1 and 2 (each its own server and subprocess).
PARALLEL = 3
OUTCOMES = ("correct", "clear error", "traceback", "silent garbage")
#: (fault, times): times=1 once per prompt, -1 on every request
SERVER_CASES = [(f, 1) for f in ("429", "500", "503", "reset", "bad_json", "empty_choices",
                                 "content_not_string", "message_string", "json_array")] + [
    (f, -1) for f in ("500", "reset", "hang", "bad_json", "empty_choices",
                      "content_not_string", "message_string", "json_array", "huge_random",
                      "huge_line")]




def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return use_shared_gene_list(env)


def _cli(args: list[str], timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cellreasoner.cli", "annotate", *args],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    return proc, time.perf_counter() - started


def _read_obs(path: Path):
    import anndata as ad

    return ad.read_h5ad(path).obs if path.exists() else None


def classify(proc: subprocess.CompletedProcess, obs, n_cells: int, ok_labels: set[str]
             ) -> tuple[str, int]:
    """``(outcome, cells lost)`` of one run (see the module docstring)."""
    if "Traceback" in proc.stderr:
        return "traceback", 0
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        clear = last.startswith("error:") and len(last) < 1000
        return ("clear error" if clear else "silent garbage"), 0
    if obs is None:
        return "silent garbage", n_cells
    lost = n_cells - len(obs)
    labels = obs["cellreasoner_label"].astype(str)
    flags = (obs["cellreasoner_failure"].astype(str) if "cellreasoner_failure" in obs
             else labels.map(lambda _: ""))
    right = labels.isin(ok_labels) | ((labels == "Unknown") & (flags != ""))
    return ("correct" if lost == 0 and right.all() else "silent garbage"), max(lost, 0)


def _server_case(k: int, fault: str, times: int, src: Path, gene_file: Path, n_cells: int,
                 tmp: Path) -> dict:
    from fault_server import LABEL, FaultServer

    out = tmp / f"server{k}.h5ad"
    timeout = "2" if fault == "hang" else "60"
    with FaultServer(fault, times=times, hang_s=10, retry_after_s=1) as server:
        proc, secs = _cli([str(src), "-o", str(out), "--backend", "openai", "--model", "m",
                           "--base-url", server.url, "--gene-list", str(gene_file),
                           "--concurrency", "4", "--timeout", timeout, "--max-retries", "1",
                           "--cache", str(tmp / f"server{k}.sqlite"), "--no-progress"])
        requests = sum(server.asked.values())
    outcome, lost = classify(proc, _read_obs(out), n_cells, {LABEL})
    return {"case": f"{fault} ({'transient' if times == 1 else 'always'})",
            "outcome": outcome, "exit": proc.returncode, "cells lost": lost,
            "requests": requests, "seconds": f"{secs:.1f}", "says": _says(proc)}


def server_faults(src: Path, gene_file: Path, n_cells: int, tmp: Path) -> list[dict]:
    """Part 1: one CLI run per (fault, times) against its own fault-injecting server."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        jobs = [pool.submit(_server_case, k, fault, times, src, gene_file, n_cells, tmp)
                for k, (fault, times) in enumerate(SERVER_CASES)]
        return [job.result() for job in jobs]


def _says(proc: subprocess.CompletedProcess) -> str:
    """The line that tells the user what happened (error, warning or note), shortened."""
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.startswith(("error:", "warning:", "note:"))]
    text = lines[-1] if lines else (proc.stderr.strip().splitlines() or [""])[-1]
    return text[:90] + ("..." if len(text) > 90 else "")


def _bad_inputs(tmp: Path, good: Path) -> dict[str, Path]:
    """Bad input files, each named by what is wrong with it."""
    import numpy as np
    from fault_server import one_gene_cells

    files: dict[str, Path] = {}
    (files.setdefault("empty file", tmp / "empty.h5ad")).write_bytes(b"")
    wrong = tmp / "cells.xyz"
    wrong.write_bytes(good.read_bytes())
    files["wrong extension"] = wrong
    data = good.read_bytes()
    (files.setdefault("truncated h5ad", tmp / "truncated.h5ad")).write_bytes(
        data[:len(data) // 2])
    genes = [str(g) for g in _genes(8)]
    for name, edit in (("NaN values", lambda X: np.full_like(X, np.nan)),
                       ("negative values", lambda X: -np.abs(X) - 1),
                       ("inf values", lambda X: np.full_like(X, np.inf))):
        a = one_gene_cells(genes)
        a.X = edit(a.X.toarray())
        files[name] = tmp / f"{name.replace(' ', '_')}.h5ad"
        a.write_h5ad(files[name])
    zero = one_gene_cells(genes)[:0].copy()
    files["0 cells"] = tmp / "zero_cells.h5ad"
    zero.write_h5ad(files["0 cells"])
    no_genes = one_gene_cells(genes)[:, :0].copy()
    files["0 genes"] = tmp / "zero_genes.h5ad"
    no_genes.write_h5ad(files["0 genes"])
    text = tmp / "garbage.csv"
    text.write_text("cell,CD3E\nc1,not-a-number\nc2,\n")
    files["CSV with text values"] = text
    files["missing file"] = tmp / "does_not_exist.h5ad"
    return files


def _bad_input_case(name: str, path: Path, tmp: Path) -> dict:
    out = tmp / f"bad_{path.stem}.h5ad"
    proc, secs = _cli([str(path), "-o", str(out), "--no-cache", "--no-progress"])
    # none of these can be annotated: exit 0 is garbage whatever the labels
    outcome, lost = classify(proc, _read_obs(out), 0, set())
    if proc.returncode == 0 and outcome == "correct":
        outcome = "silent garbage"
    return {"case": name, "outcome": outcome, "exit": proc.returncode, "cells lost": lost,
            "requests": "-", "seconds": f"{secs:.1f}", "says": _says(proc)}


def bad_inputs(tmp: Path, good: Path) -> list[dict]:
    """Part 2: the CLI (builtin backend) on bad input files."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        jobs = [pool.submit(_bad_input_case, name, path, tmp)
                for name, path in _bad_inputs(tmp, good).items()]
        return [job.result() for job in jobs]


def _stored(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _shared_cmd(src: Path, gene_file: Path, out: Path, url: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "cellreasoner.cli", "annotate", str(src), "-o", str(out),
            "--backend", "openai", "--model", "m", "--base-url", url, "--gene-list",
            str(gene_file), "--concurrency", "2", "--batch-size", "4", "--cache", str(cache),
            "--no-progress"]


def concurrency(src: Path, gene_file: Path, n_cells: int, tmp: Path) -> list[dict]:
    """Part 3: 1, 2 and 4 runs at once on one cache, then a SIGKILL beside a live run."""
    from fault_server import LABEL, FaultServer

    rows = []
    for runs in (1, 2, 4):
        cache = tmp / f"shared{runs}.sqlite"
        with FaultServer("ok", delay_s=0.2) as server:
            started = time.perf_counter()
            procs = [subprocess.Popen(_shared_cmd(src, gene_file, tmp / f"c{runs}_{k}.h5ad",
                                                  server.url, cache), env=_env(), cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for k in range(runs)]
            done = [subprocess.CompletedProcess(p.args, p.wait(timeout=300), "",
                                                p.communicate()[1]) for p in procs]
            secs = time.perf_counter() - started
            twice = server.asked_twice()
            requests = sum(server.asked.values())
        results = [classify(d, _read_obs(tmp / f"c{runs}_{k}.h5ad"), n_cells, {LABEL})
                   for k, d in enumerate(done)]
        outcome = next((o for o, _ in results if o != "correct"), "correct")
        rows.append({"case": f"{runs} run(s), one cache", "outcome": outcome,
                     "exit": ",".join(str(d.returncode) for d in done),
                     "cells lost": sum(lost for _, lost in results), "requests": requests,
                     "asked twice": twice, "seconds": f"{secs:.1f}"})
    rows.append(_killed(src, gene_file, n_cells, tmp))
    return rows


def _killed(src: Path, gene_file: Path, n_cells: int, tmp: Path) -> dict:
    """Two runs on one cache; one is killed with SIGKILL; the other finishes the work."""
    from fault_server import LABEL, FaultServer

    cache = tmp / "killed.sqlite"
    with FaultServer("ok", delay_s=0.3) as server:
        started = time.perf_counter()
        victim, other = (subprocess.Popen(_shared_cmd(src, gene_file, tmp / f"k{k}.h5ad",
                                                      server.url, cache), env=_env(), cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True) for k in range(2))
        deadline = time.monotonic() + 120
        while _stored(cache) < max(4, n_cells // 4) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        err = other.communicate(timeout=300)[1]
        secs = time.perf_counter() - started
        twice = server.asked_twice()
        requests = sum(server.asked.values())
    done = subprocess.CompletedProcess(other.args, other.returncode, "", err)
    outcome, lost = classify(done, _read_obs(tmp / "k1.h5ad"), n_cells, {LABEL})
    return {"case": "kill -9 one of 2 runs", "outcome": outcome,
            "exit": f"{victim.returncode},{other.returncode}", "cells lost": lost,
            "requests": requests, "asked twice": twice, "seconds": f"{secs:.1f}"}


def _genes(n: int) -> list[str]:
    from cellreasoner.resources import load_gene_list

    return load_gene_list(_env().get("CELLREASONER_GENE_LIST"))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=16, help="cells (= prompts) per run")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fault_server import one_gene_cells

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        genes = _genes(args.cells)
        src, gene_file = tmp / "in.h5ad", tmp / "genes.txt"
        one_gene_cells(genes).write_h5ad(src)
        gene_file.write_text("\n".join(genes) + "\n")
        cols = ["case", "outcome", "exit", "cells lost", "requests", "seconds", "says"]
        parts = [(f"Part 1 - faults from a model server ({len(genes)} cells per run, "
                  "--max-retries 1)", server_faults(src, gene_file,
                                                                       len(genes), tmp), cols),
                 ("Part 2 - bad input files (builtin backend)", bad_inputs(tmp, src), cols),
                 (f"Part 3 - concurrent runs on one cache, kill -9 ({len(genes)} cells, "
                  "--concurrency 2 --batch-size 4 each)",
                  concurrency(src, gene_file, len(genes), tmp),
                  ["case", "outcome", "exit", "cells lost", "requests", "asked twice",
                   "seconds"])]
        for title, rows, columns in parts:
            print(f"{title}\n")
            print(table(rows, columns) + "\n")
        every = [r for _, rows, _ in parts for r in rows]
        summary = {"cases tried": len(every),
                   **{o: sum(r["outcome"] == o for r in every) for o in OUTCOMES},
                   "cells lost": sum(r["cells lost"] for r in every),
                   "asked twice after kill -9": parts[2][1][-1]["asked twice"],
                   "asked twice without a kill": sum(r["asked twice"] for r in parts[2][1][:-1])}
        print(table([summary], list(summary)))


if __name__ == "__main__":
    main()
