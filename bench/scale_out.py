"""Benchmark: the built-in reasoner in one process vs on a local Ray cluster of 1 and 2 workers.

Run from the project root (``pip install 'cellreasoner[ray]'``; ../shared gives the real gene
list, else synthetic names are used)::

    python bench/scale_out.py [--cells 1000000] [--nnz 1500] [--workdir DIR]

Data: synthetic *realistic* cells (``tests/synthetic.py``: 18,000 genes, ``--nnz`` non-zeros per
cell, log1p CP10k CSR, ten textbook immune programmes), written to ``.h5ad`` chunk by chunk (kept
in ``--workdir`` for the next run). Each configuration is one whole process writing the obs-only
``.parquet`` (the matrix is not copied), timed from its start, Ray's start-up included:

- ``one process``: ``annotate(path, workers=1)``;
- ``local, 2 worker processes``: ``annotate(path, workers=2)`` (the local engine's processes,
  each reading its own chunks from the file);
- ``ray N``: ``annotate(path, engine="ray", workers=N)``, which starts its own local cluster
  of N CPUs and stops it at the end, as a user's run does (chunks of 20,000 cells as tasks,
  read by the workers from the file; no manifest);
- ``ray N, running cluster``: the same on a cluster of N CPUs that ``ray start --head`` started
  before the timer (stopped after it), as on a real cluster, where jobs join a running one
  (``annotate(path, engine="ray", address=...)``; Ray's start-up is not timed, its processes'
  memory is counted).

Every run starts alike (``_common.settle``): earlier writes flushed, the input read through
once so that it is in the page cache (unless it would not fit beside a run).

``--repeat`` rounds (default 3) of the six runs, one configuration after another in each
round (this shared VM drifts by tens of percent within minutes): the table gives each
configuration's median and every run in round order, memory peaks the largest of its runs;
the overhead and speed-ups are taken round by round (runs minutes apart) and their median
given with every round's.

Memory is sampled every 0.2 s over the whole process tree (RSS): the driver's peak, the
largest other process's (a worker, or one of Ray's own), and the peak of their sum; and the peak
of their summed PSS, sampled once a second (shared pages counted once: Ray's object store,
shared libraries). The answers
of every run are checked equal to the single process's. Overhead = ray 1 / one process - 1
(target <= 15%); speed-up = one process / ray 2 (target >= 1.6x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import settle, table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

RUN = """
import json, os, sys, threading, time
t0 = time.perf_counter()
engine, workers = sys.argv[3], int(sys.argv[4])
address = sys.argv[5] if len(sys.argv) > 5 else None
import psutil

def cluster_processes():  # a running cluster's own processes (not this driver's children)
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        first = cmd[0] if cmd else ""
        if (first.startswith("ray::") or first.endswith(("gcs_server", "raylet"))
                or any("/ray/" in c and c.endswith(".py") for c in cmd[:3])):
            out.append(p)
    return out

peak = {"total": 0.0, "largest": 0.0, "driver": 0.0, "pss": 0.0}

def sample():  # the whole process tree: this driver, its workers (and Ray's own processes)
    me, k, others = psutil.Process(), 0, []
    while True:
        full = k % 5 == 0  # PSS (the kernel walks every page: costlier) once a second
        k += 1
        procs = [me, *me.children(recursive=True)]
        if address and k % 5 == 1:  # the cluster's processes, listed again once a second
            others = [p for p in cluster_processes() if p not in procs]
        procs += others
        rss, pss = [], 0.0
        for p in procs:
            try:
                info = p.memory_full_info() if full else p.memory_info()
            except psutil.Error:  # exited since listed: nothing to count
                if p is me:
                    raise
                continue
            rss.append(info.rss / 2**20)
            pss += info.pss / 2**20 if full else 0.0
        peak["total"] = max(peak["total"], sum(rss))
        peak["pss"] = max(peak["pss"], pss)
        peak["largest"] = max(peak["largest"], max(rss[1:], default=0.0))
        peak["driver"] = max(peak["driver"], rss[0])
        time.sleep(0.2)

threading.Thread(target=sample, daemon=True).start()
from cellreasoner.annotation import annotate
result = annotate(sys.argv[1], progress=False, engine=engine, workers=workers,
                  address=address)
result.write(sys.argv[2])
seconds = time.perf_counter() - t0
time.sleep(0.3)
print("RESULT " + json.dumps({"seconds": seconds, "driver_mib": peak["driver"],
                              "worker_mib": peak["largest"], "total_mib": peak["total"],
                              "pss_mib": peak["pss"]}))
"""


BURN = """
import multiprocessing as mp, time
def burn(n):
    x = 0
    for i in range(n):
        x += i * i
    return x
if __name__ == "__main__":
    n = 15_000_000
    t = time.perf_counter(); burn(n); one = time.perf_counter() - t
    with mp.Pool(2) as pool:
        pool.map(burn, [1000, 1000])
        t = time.perf_counter(); pool.map(burn, [n, n]); two = time.perf_counter() - t
    print(f"RESULT {2 * one / two:.2f}")
"""


def machine_scaling() -> float:
    """How much faster two processes of pure arithmetic finish two jobs than one process
    (the most two workers can gain on this machine; 2.0 on two free physical cores)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(BURN)], capture_output=True,
                          text=True, check=True)
    return float(done.stdout.split("RESULT")[-1])


def run(path: Path, out: Path, engine: str, workers: int) -> dict:
    env = use_shared_gene_list(dict(__import__("os").environ))
    env["PYTHONPATH"] = str(ROOT / "src")
    address = None
    if engine == "ray-running":  # a cluster started before the timer, as users' clusters are
        engine, address = "ray", start_cluster(workers, env)
    cmd = [sys.executable, "-c", textwrap.dedent(RUN), str(path), str(out), engine,
           str(workers), *([address] if address else [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    finally:
        if address:
            subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not line:
        raise SystemExit(f"failed: workers={workers}\n{done.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def start_cluster(cpus: int, env: dict) -> str:
    """``ray start --head`` of ``cpus`` CPUs on 127.0.0.1 (token authentication, Ray's
    default: ``env`` gets ``RAY_AUTH_MODE=token`` for the driver); returns its address."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(["ray", "start", "--head", f"--num-cpus={cpus}", f"--port={port}",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   capture_output=True, text=True, env=env, check=True)
    env["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE", "token")
    return f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--nnz", type=int, default=1500)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the six runs (the table gives each one's median)")
    args = ap.parse_args()
    import pandas as pd
    import synthetic

    use_shared_gene_list()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scale_out_"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"synthetic_{args.cells}_{args.nnz}.h5ad"
    if not path.is_file():
        synthetic.write_h5ad(path, args.cells, nnz=args.nnz)
    rows, labels = [], {}
    configs = (("one process", "local", 1), ("local, 2 worker processes", "local", 2),
               ("ray 1 worker", "ray", 1), ("ray 2 workers", "ray", 2),
               ("ray 1 worker, running cluster", "ray-running", 1),
               ("ray 2 workers, running cluster", "ray-running", 2))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for _ in range(args.repeat):  # rounds of every configuration: the machine drifts
        for name, engine, workers in configs:
            out = work / f"out_{engine}_{workers}.parquet"
            start = settle(path)
            runs[name].append(run(path, out, engine, workers))
            labels[name] = pd.read_parquet(out)["label"].to_numpy(dtype=str)
            if (labels[name] != labels["one process"]).any():
                raise SystemExit(f"{name}: labels differ from the single process's")
    for name, _, _ in configs:
        took = [r["seconds"] for r in runs[name]]  # in round order
        peak = {k: max(r[k] for r in runs[name])
                for k in ("driver_mib", "worker_mib", "total_mib", "pss_mib")}
        middle = statistics.median(took)  # the table's seconds; ratios are per round below
        rows.append({"engine": name, "cells": f"{args.cells:,}",
                     "seconds": f"{middle:.1f}",
                     "runs s": " / ".join(f"{t:.1f}" for t in took),
                     "cells/s": f"{args.cells / middle:,.0f}",
                     "driver peak MiB": f"{peak['driver_mib']:,.0f}",
                     "largest worker MiB": (f"{peak['worker_mib']:,.0f}" if peak["worker_mib"]
                                            else ""),
                     "all processes MiB": f"{peak['total_mib']:,.0f}",
                     "all processes PSS MiB": f"{peak['pss_mib']:,.0f}",
                     "same labels": "yes"})
    names = [name for name, _, _ in configs]

    def per_round(a: str, b: str) -> list[float]:  # a's seconds / b's, round by round
        return [x["seconds"] / y["seconds"] for x, y in zip(runs[a], runs[b], strict=True)]

    def spread(values: list[float], fmt: str) -> str:
        return (f"{fmt.format(statistics.median(values))} (rounds: "
                + ", ".join(fmt.format(v) for v in values) + ")")

    overhead = [100 * (r - 1) for r in per_round(names[2], names[0])]
    ray_up, local_up = per_round(names[0], names[3]), per_round(names[0], names[1])
    running_overhead = [100 * (r - 1) for r in per_round(names[4], names[0])]
    running_up = per_round(names[0], names[5])
    print(table(rows, list(rows[0]), align="right", sep="-|-"))
    print(f"\nthis machine: two processes of pure arithmetic run {machine_scaling():.2f}x as "
          "fast as one (the ceiling of any 2-worker speed-up here)")
    print("\nround by round (the configurations of a round ran one after another; the median "
          "of the rounds' ratios):")
    print(f"Ray overhead at 1 worker: {spread(overhead, '{:+.1f}%')} (target <= 15%); "
          f"speed-up at 2 workers: Ray {spread(ray_up, '{:.2f}x')} (target >= 1.6x), local "
          f"processes {spread(local_up, '{:.2f}x')}")
    print(f"On a running cluster (Ray's start-up not timed): overhead at 1 worker "
          f"{spread(running_overhead, '{:+.1f}%')}, speed-up at 2 workers "
          f"{spread(running_up, '{:.2f}x')}; data {path} "
          f"({path.stat().st_size / 2**30:.1f} GiB, {args.nnz} non-zeros per cell), "
          f"read from {'the page cache' if start else 'disk'}")


if __name__ == "__main__":
    main()
