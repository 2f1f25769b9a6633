"""Benchmark: the built-in reasoner in one process vs on a local Ray cluster of 1 and 2 workers.

Run from the project root (``pip install 'cellreasoner[ray]'``; ../shared gives the real gene
list, else synthetic names are used)::

    python bench/scale_out.py [--cells 1000000] [--nnz 1500] [--workdir DIR]

Data: synthetic *realistic* cells (``tests/synthetic.py``: 18,000 genes, ``--nnz`` non-zeros per
cell, log1p CP10k CSR, ten textbook immune programmes), written to ``.h5ad`` chunk by chunk (kept
in ``--workdir`` for the next run). Each configuration is one whole process writing the obs-only
``.parquet`` (the matrix is not copied), timed from its start, Ray's start-up included:

- ``local``: ``annotate(path)``, the single process;
- ``ray N``: ``ray.init(num_cpus=N)``, then ``annotate(path, engine="ray")`` (chunks of 20,000
  cells as tasks; no manifest).

Peak RSS is each process's high-water mark (``VmHWM``): the driver's, and the largest of the
Ray worker processes' (read before the cluster shuts down). The answers of every Ray run are
checked equal to the single process's. Overhead = ray 1 / local - 1 (target <= 15%); speed-up
= local / ray 2 (target >= 1.6x).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

RUN = """
import json, os, sys, time
t0 = time.perf_counter()
workers = int(sys.argv[3])
import psutil
if workers:
    import ray
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
from cellreasoner.annotation import annotate
result = annotate(sys.argv[1], progress=False, **({"engine": "ray"} if workers else {}))
result.write(sys.argv[2])
seconds = time.perf_counter() - t0

def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0

worker_mib = [hwm(p.pid) for p in psutil.process_iter(["cmdline"])
              if " ".join(p.info["cmdline"] or []).startswith("ray::")]
print("RESULT " + json.dumps({"seconds": seconds, "driver_mib": hwm(os.getpid()),
                              "worker_mib": max(worker_mib, default=0.0),
                              "n_workers": len(worker_mib)}))
"""


def run(path: Path, out: Path, workers: int) -> dict:
    cmd = [sys.executable, "-c", textwrap.dedent(RUN), str(path), str(out), str(workers)]
    env = use_shared_gene_list(dict(__import__("os").environ))
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not line:
        raise SystemExit(f"failed: workers={workers}\n{done.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--nnz", type=int, default=1500)
    ap.add_argument("--workdir", type=Path)
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
    for name, workers in (("local", 0), ("ray 1 worker", 1), ("ray 2 workers", 2)):
        out = work / f"out_{workers}.parquet"
        r = run(path, out, workers)
        labels[name] = pd.read_parquet(out)["label"].to_numpy(dtype=str)
        rows.append({"engine": name, "cells": f"{args.cells:,}",
                     "seconds": f"{r['seconds']:.1f}",
                     "cells/s": f"{args.cells / r['seconds']:,.0f}",
                     "driver peak MiB": f"{r['driver_mib']:,.0f}",
                     "worker peak MiB": f"{r['worker_mib']:,.0f}" if workers else "",
                     "same labels": "yes" if (labels[name] == labels["local"]).all() else "NO"})
    secs = [float(r["seconds"]) for r in rows]
    print(table(rows, list(rows[0]), align="right", sep="-|-"))
    print(f"\nRay overhead at 1 worker: {100 * (secs[1] / secs[0] - 1):+.1f}% (target <= 15%); "
          f"speed-up at 2 workers: {secs[0] / secs[2]:.2f}x (target >= 1.6x); "
          f"data {path} ({path.stat().st_size / 2**30:.1f} GiB, {args.nnz} non-zeros per cell)")


if __name__ == "__main__":
    main()
