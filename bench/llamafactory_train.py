"""Train the exported LLaMA-Factory project for real, on CPU, then annotate with the result.

Not part of CI: it needs ``llamafactory`` (a ~6.5 GB venv: it pulls the CUDA torch from PyPI,
which also runs on CPU) and a few minutes. What runs is our code path end to end:

1. a tiny random Qwen2 chat model (``tests/tiny_model.build_tiny_qwen2``) stands in for
   Qwen2.5-7B-Instruct;
2. ``cellreasoner train build-knowledge`` / ``build-reasoning --teacher builtin`` /
   ``build-fusion`` make the three stages' records from scanpy's bundled pbmc68k_reduced;
3. ``cellreasoner train export-llamafactory`` writes the project (datasets,
   ``dataset_info.json``, stage YAMLs, merge YAMLs, ``run.sh``), LoRA and full fine-tuning;
4. every command of ``run.sh`` runs in order with ``llamafactory-cli`` (train for
   ``--max-steps`` steps; LoRA adapters merged by ``llamafactory-cli export``; each stage
   starts from the previous stage's model as exported);
5. the final model is loaded by cellreasoner's ``transformers`` backend and annotates a few
   cells with ``cellreasoner.annotate``.

It also compares the first training example LLaMA-Factory logs (``inputs:``) with the
record's prompt rendered by the model's chat template (column "system/user turns": the
instruction is the system turn, the cell sentence the user turn) and with the exact text
``annotate`` sends (column "= annotate's text"). The latter is False for reasoning records, as
upstream: inference deletes every ``<think>`` from the rendered prompt, also the one in the
reasoning instruction ("... within the <think></think> tag." is sent as "... within the
</think> tag."), while the training records keep the instruction as written.

Set up once (from the project root)::

    python -m venv /tmp/venv-lf
    /tmp/venv-lf/bin/pip install llamafactory==0.9.5
    /tmp/venv-lf/bin/pip install --no-deps -e .
    /tmp/venv-lf/bin/pip install numpy pandas scipy anndata h5py scanpy rich httpx pooch \\
        pyarrow cellxgene-ontology-guide igraph rdata

Run (needs ../shared/data/ranked_hvg.list, or $CELLREASONER_GENE_LIST)::

    /tmp/venv-lf/bin/python bench/llamafactory_train.py [--max-steps 2] [--finetuning both]

Overrides given to ``llamafactory-cli train`` (``key=value`` after the YAML, which
LLaMA-Factory merges over the file): ``max_steps`` (a few steps instead of the epochs),
``bf16=false`` (the exported ``bf16: true`` is right for GPUs, but on a CPU-only machine
transformers refuses it: "Your setup doesn't support bf16/gpu") and ``logging_steps=1``.
Nothing else is changed: the exported files are used as written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _common import table, use_shared_gene_list  # noqa: E402 - the bench folder is on sys.path


def _env() -> dict:
    use_shared_gene_list()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CELLREASONER_CACHE", tempfile.mkdtemp(prefix="cr_cache_"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                      env.get("PYTHONPATH")]))
    return env




def _run(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def _cli(args: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run([sys.executable, "-m", "cellreasoner.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"cellreasoner {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def build_data(work: Path, env: dict) -> dict[int, Path]:
    """The three stages' records, made by the cellreasoner CLI from pbmc68k_reduced."""
    _cli(["train", "build-knowledge", "pbmc68k_reduced", "--label-key", "bulk_labels",
          "-o", "knowledge.json", "--max-per-label", "2", "--max-genes", "200"], work, env)
    _cli(["train", "build-reasoning", "knowledge.json", "--teacher", "builtin",
          "-o", "scaffold.json", "--max-records", "8", "--no-cache", "--no-progress"],
         work, env)
    _cli(["train", "build-fusion", "--direct", "knowledge.json", "--reasoning",
          "scaffold.json", "-o", "fusion.json"], work, env)
    return {1: work / "scaffold.json", 2: work / "knowledge.json", 3: work / "fusion.json"}


def _first_example(log_text: str) -> str:
    """The decoded ``inputs:`` block of the training example LLaMA-Factory logs."""
    start = log_text.index("\ninputs:\n") + len("\ninputs:\n")
    return log_text[start:log_text.index("\nlabel_ids:", start)]


def _layout(export_dir: Path, stage: dict, log_text: str, tokenizer) -> tuple[bool, bool]:
    """Does LLaMA-Factory's first rendered example start with (the chat template's rendering
    of its record, cellreasoner's inference text for it)?

    The two differ for reasoning records only: upstream inference (``render_chat_text``)
    deletes every ``<think>`` from the rendered text, the one in the instruction's
    "<think></think> tag" included, while the training records keep the instruction whole.
    """
    from cellreasoner.backends.transformers import chat_text
    from cellreasoner.prompts import INSTRUCTION_REASONING, Prompt

    rec = json.loads((export_dir / stage["dataset_file"]).read_text())[0]
    prompt = Prompt(rec["instruction"], rec["input"],
                    reasoning=rec["instruction"] == INSTRUCTION_REASONING)
    example = _first_example(log_text)
    template = tokenizer.apply_chat_template(prompt.messages(), tokenize=False,
                                             add_generation_prompt=True)
    ours = chat_text(tokenizer, prompt, "tiny")
    if prompt.reasoning:  # inference opens the think block; the training output holds it
        ours = ours[:-len("<think> ")]
    return example.startswith(template), example.startswith(ours)


def train_export(kind: str, model_dir: Path, data: dict[int, Path], work: Path, env: dict,
                 args) -> tuple[list[dict], Path]:
    """Export with ``--finetuning kind`` and run every command of ``run.sh``."""
    from transformers import AutoTokenizer

    out = work / f"lf_{kind}"
    _cli(["train", "export-llamafactory", "-o", str(out), "--model", str(model_dir),
          "--finetuning", kind, "--cutoff-len", str(args.cutoff_len),
          "--stage1", str(data[1]), "--stage2", str(data[2]), "--stage3", str(data[3])],
         work, env)
    manifest = json.loads((out / "cellreasoner_export.json").read_text())
    stages = {f"stage{s['stage']}_train.yaml": s for s in manifest["stages"]}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    overrides = [f"max_steps={args.max_steps}", "bf16=false", "logging_steps=1"]
    lf = str(Path(sys.executable).with_name("llamafactory-cli"))
    rows = []
    for i, command in enumerate(manifest["commands"]):
        action, yaml_file = command.split()[1:]
        extra = overrides if action == "train" else []
        log = out / f"log_{i}_{yaml_file}.txt"
        rc, wall = _run([lf, action, yaml_file, *extra], out, env, log)
        text = log.read_text()
        row = {"finetuning": kind, "command": f"{action} {yaml_file}", "rc": rc,
               "s": f"{wall:.0f}", "train loss": "", "system/user turns": "",
               "= annotate's text": "", "wrote": ""}
        if rc:
            tail = "\n".join(text.splitlines()[-15:])
            raise SystemExit(f"llamafactory-cli {action} {yaml_file} failed ({log}):\n{tail}")
        if action == "train":
            stage = stages[yaml_file]
            result = json.loads((out / stage["output_dir"] / "train_results.json").read_text())
            row["train loss"] = f"{result['train_loss']:.3f}"
            row["system/user turns"], row["= annotate's text"] = _layout(out, stage, text,
                                                                          tokenizer)
            row["wrote"] = stage["output_dir"]
            weights = "adapter_config.json" if kind == "lora" else "config.json"
        else:
            row["wrote"] = next(s["merged_dir"] for s in manifest["stages"]
                                if s["merge_yaml"] == yaml_file)
            weights = "config.json"
        assert (out / row["wrote"] / weights).is_file(), row
        rows.append(row)
    return rows, out / manifest["final_model"]


def weight_change(model: Path, base: Path) -> str:
    """Largest absolute weight difference between ``model`` and ``base`` (did training move?)."""
    from safetensors.torch import load_file

    a, b = load_file(model / "model.safetensors"), load_file(base / "model.safetensors")
    return f"{max(float((a[k].float() - b[k].float()).abs().max()) for k in b):.1e}"


def annotate_with(final_model: Path, kind: str, cells: int, max_new_tokens: int,
                  base: Path) -> list[dict]:
    """Direct and reasoning annotation of pbmc68k cells with the trained model."""
    import scanpy as sc

    import cellreasoner as cr

    adata = sc.datasets.pbmc68k_reduced()[:cells].copy()
    moved = weight_change(final_model, base)
    rows = []
    for reasoning in (False, True):
        t0 = time.perf_counter()
        res = cr.annotate(adata, "transformers", model=str(final_model), reasoning=reasoning,
                          max_new_tokens=max_new_tokens, use_raw=True, cache=False,
                          progress=False, copy=True,
                          backend_options={"device": "cpu", "batch_size": 4})
        table = res.table
        first = " ".join(str(table["response"].iloc[0]).split())
        rows.append({"model": f"{kind}: {final_model.parent.name}/{final_model.name}",
                     "max |w - w_base|": moved,
                     "mode": "reasoning" if reasoning else "direct", "cells": adata.n_obs,
                     "labels parsed": int((table["label"].astype(str).str.len() > 0).sum()),
                     "distinct": int(table["label"].nunique()),
                     "s": f"{time.perf_counter() - t0:.1f}",
                     "first response": first[:40] + ("..." if len(first) > 40 else "")})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=2, help="steps per stage (2)")
    parser.add_argument("--cutoff-len", type=int, default=4096,
                        help="tokens per example (4096: a 200-gene sentence fits untruncated)")
    parser.add_argument("--finetuning", choices=["lora", "full", "both"], default="both")
    parser.add_argument("--cells", type=int, default=8, help="cells annotated at the end (8)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    env = _env()

    import llamafactory
    from tiny_model import build_tiny_qwen2

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lf_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"llamafactory {llamafactory.__version__}; work folder {work}")
    model_dir = build_tiny_qwen2(work / "tiny")
    data = build_data(work, env)
    counts = {s: len(json.loads(p.read_text())) for s, p in data.items()}
    print(f"stage records: {counts}")

    kinds = ["lora", "full"] if args.finetuning == "both" else [args.finetuning]
    steps, answers = [], []
    for kind in kinds:
        rows, final = train_export(kind, model_dir, data, work, env, args)
        steps += rows
        answers += annotate_with(final, kind, args.cells, args.max_new_tokens, model_dir)

    print(f"\nllamafactory-cli, every command of run.sh in order (train: "
          f"max_steps={args.max_steps} bf16=false logging_steps=1):")
    print(table(steps, list(steps[0])))
    print("\nannotate(pbmc68k_reduced, backend='transformers', model=<final model>) "
          f"(max_new_tokens={args.max_new_tokens}; a tiny model after a few steps: nonsense "
          "that still parses):")
    print(table(answers, list(answers[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
