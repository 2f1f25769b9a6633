"""``cellreasoner train``: build stage data, export for LLaMA-Factory, or fine-tune natively.

The three-stage CellReasoner recipe::

    cellreasoner train build-knowledge data.h5ad --label-key cell_type -o knowledge.json \\
        --split-key donor --test-output heldout.json
    cellreasoner train build-reasoning knowledge.json --teacher openai --model deepseek-r1 \\
        --base-url http://localhost:8000/v1 -o scaffold.json
    cellreasoner train build-fusion --direct knowledge.json --reasoning scaffold.json \\
        -o fusion.json
    cellreasoner train run --stage 1 --model Qwen/Qwen2.5-7B-Instruct --data scaffold.json -o s1
    cellreasoner train run --stage 2 --model s1 --data knowledge.json -o s2
    cellreasoner train run --stage 3 --model s2 --data fusion.json -o s3
    # or: cellreasoner train export-llamafactory --stage1 scaffold.json --stage2 ... -o lf/
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="build training data and fine-tune (reasoning scaffold, knowledge, fusion)",
        description="The three-stage CellReasoner training recipe: build each stage's data, then "
        "train natively (TRL + LoRA) or export a LLaMA-Factory project.",
    )
    actions = p.add_subparsers(dest="train_action", metavar="ACTION")
    actions.required = True
    _register_knowledge(actions)
    _register_reasoning(actions)
    _register_fusion(actions)
    _register_export(actions)
    _register_run(actions)


# --- builders -------------------------------------------------------------------------------
def _register_knowledge(actions) -> None:
    p = actions.add_parser(
        "build-knowledge", help="labelled cells -> direct-answer records (stage 2)",
        description="Turn labelled cells into CellReasoner SFT records (instruction, cell "
        "sentence, label), with a held-out split by donor/sample or stratified by label.")
    p.add_argument("input", help="labelled .h5ad, Seurat .rds, 10x, CSV, or pbmc68k_reduced")
    p.add_argument("--label-key", required=True, help="obs column with the cell-type labels")
    p.add_argument("-o", "--output", required=True, help="training records (.json or .jsonl)")
    p.add_argument("--test-output", help="held-out records (.json or .jsonl)")
    p.add_argument("--gene-list", help="ranked gene list file (default: the published list)")
    p.add_argument("--max-genes", type=int, default=1000, help="genes per sentence (1000)")
    p.add_argument("--order", choices=["ranked", "expression"], default="ranked",
                   help="gene order of the sentences (default ranked, as upstream)")
    p.add_argument("--layer", help="layer to read instead of X")
    p.add_argument("--use-raw", action="store_true", help="read adata.raw")
    p.add_argument("--normalize-labels", action="store_true",
                   help="replace labels by their Cell Ontology names where they map")
    p.add_argument("--max-per-label", type=int, help="training cells per label at most")
    p.add_argument("--min-per-label", type=int, default=1,
                   help="leave out labels with fewer training cells (default 1)")
    p.add_argument("--balance", action="store_true",
                   help="downsample every label to the rarest one")
    p.add_argument("--split-key", help="obs column of donors/samples: hold out whole groups")
    p.add_argument("--holdout", help="comma-separated groups to hold out (with --split-key)")
    p.add_argument("--test-size", type=float, default=0.1,
                   help="fraction of cells held out (default 0.1; 0 for none)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.set_defaults(func=_run_knowledge)


def _run_knowledge(args: argparse.Namespace) -> int:
    from ..train.build import build_knowledge

    res = build_knowledge(
        args.input, args.label_key, gene_list=args.gene_list, max_genes=args.max_genes,
        order=args.order, layer=args.layer, use_raw=args.use_raw,
        normalize_labels=args.normalize_labels, max_per_label=args.max_per_label,
        min_per_label=args.min_per_label, balance=args.balance, split_key=args.split_key,
        holdout=args.holdout.split(",") if args.holdout else None, test_size=args.test_size,
        seed=args.seed,
    )
    paths = res.write(args.output, args.test_output)
    print(f"wrote {len(res.records)} training records to {paths[0]}")
    if args.test_output:
        print(f"wrote {len(res.test)} held-out records to {paths[1]}")
    if res.info["holdout"]:
        print(f"held-out groups: {', '.join(res.info['holdout'])}")
    print(f"labels: {len(res.info['train_label_counts'])}")
    return 0


def _register_reasoning(actions) -> None:
    p = actions.add_parser(
        "build-reasoning", help="teacher reasoning traces, kept when correct (stage 1)",
        description="Ask a teacher (any annotation backend) for reasoning traces on labelled "
        "records; keep only those whose answer the automatic scorer rates 1 (rejection "
        "sampling), deduplicated and capped.")
    p.add_argument("records", help="labelled direct-answer records (from build-knowledge)")
    p.add_argument("-o", "--output", required=True, help="reasoning records (.json or .jsonl)")
    p.add_argument("--teacher", default="builtin",
                   help="backend: builtin (default), openai (e.g. a DeepSeek-R1 server), "
                   "transformers, vllm, gguf")
    p.add_argument("--model", help="teacher model name, folder or file")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (openai teacher)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (openai "
                   "teacher); the key itself is never written anywhere")
    p.add_argument("--concurrency", type=int, help="parallel requests (openai teacher)")
    p.add_argument("--n", type=int, default=1, help="attempts per cell (default 1)")
    p.add_argument("--temperature", type=float, help="default 0.6 (reasoning mode)")
    p.add_argument("--top-p", type=float, help="default 0.4 (reasoning mode)")
    p.add_argument("--max-new-tokens", type=int, help="default 4096")
    p.add_argument("--n-candidates", type=int,
                   help="cells sent to the teacher, balanced across labels (default all)")
    p.add_argument("--max-records", type=int, default=380,
                   help="traces kept at most, balanced across labels (default 380)")
    p.add_argument("--max-per-label", type=int, help="traces kept per label at most")
    p.add_argument("--min-score", type=float, default=1.0,
                   help="scorer threshold (default 1: subtype correct)")
    p.add_argument("--answer", choices=["truth", "teacher"], default="truth",
                   help="answer after the reasoning: the ground truth (default) or the "
                   "teacher's words")
    p.add_argument("--seed", type=int, default=0, help="seed of the candidate draw")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache", help="SQLite cache of teacher answers (default: "
                       "$CELLREASONER_CACHE/annotations.sqlite); a rerun resumes from it")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write a cache")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_reasoning)


def _run_reasoning(args: argparse.Namespace) -> int:
    from ..progress import progress_bar
    from ..prompts import SamplingParams
    from ..train.build import build_reasoning
    from ..train.records import write_records
    from .annotate import backend_options

    opts = backend_options(args)
    if args.model:
        opts["model"] = args.model
    sampling = SamplingParams.for_mode(True, n=args.n, temperature=args.temperature,
                                       top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    with progress_bar("teacher", args.n_candidates,
                      enabled=False if args.no_progress else None) as advance:
        res = build_reasoning(
            args.records, args.teacher, teacher_options=opts, sampling=sampling,
            n_candidates=args.n_candidates, max_records=args.max_records,
            max_per_label=args.max_per_label, min_score=args.min_score, answer=args.answer,
            cache=False if args.no_cache else args.cache, seed=args.seed, progress=advance,
        )
    write_records(res.records, args.output)
    i = res.info
    print(f"teacher answered {i['n_generated']} times for {i['n_candidates']} cells: "
          f"{i['n_accepted']} accepted, {i['n_rejected']} rejected by the scorer, "
          f"{i['n_no_reasoning'] + i['n_no_answer']} without reasoning/answer, "
          f"{i['n_duplicates']} duplicates ({i['cache_hits']} answers from the cache)")
    print(f"wrote {len(res.records)} reasoning records to {args.output}")
    return 0


def _register_fusion(actions) -> None:
    p = actions.add_parser(
        "build-fusion", help="mix direct-answer and reasoning records (stage 3)",
        description="Mix direct-answer and reasoning records, each with its own upstream "
        "instruction, so one model serves both modes.")
    p.add_argument("--direct", required=True, help="direct-answer records")
    p.add_argument("--reasoning", required=True, help="reasoning records")
    p.add_argument("-o", "--output", required=True, help="fusion records (.json or .jsonl)")
    p.add_argument("--direct-ratio", type=float, default=1.0,
                   help="direct records per reasoning record (default 1)")
    p.add_argument("--mirror", action="store_true",
                   help="also add the direct-answer version of every reasoning record")
    p.add_argument("--max-records", type=int, help="cap on the total")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_fusion)


def _run_fusion(args: argparse.Namespace) -> int:
    from ..train.build import build_fusion
    from ..train.records import write_records

    res = build_fusion(args.direct, args.reasoning, direct_ratio=args.direct_ratio,
                       mirror=args.mirror, max_records=args.max_records, seed=args.seed)
    write_records(res.records, args.output)
    print(f"wrote {res.info['n_records']} records ({res.info['n_reasoning']} reasoning, "
          f"{res.info['n_direct']} direct) to {args.output}")
    return 0


# --- LLaMA-Factory --------------------------------------------------------------------------
def _stage_values(items: list[str] | None, what: str) -> dict[int, float]:
    from ..errors import InputError

    out = {}
    for item in items or []:
        stage, sep, value = item.partition("=")
        try:
            out[int(stage)] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--{what} {item!r}: write STAGE=VALUE, e.g. --{what} 2=1e-4.")
    return out


def _register_export(actions) -> None:
    p = actions.add_parser(
        "export-llamafactory", help="write datasets + YAML for llamafactory-cli",
        description="Write each stage's dataset, dataset_info.json, per-stage training (and "
        "LoRA merge) YAML and run.sh for LLaMA-Factory.")
    p.add_argument("-o", "--output", required=True, help="export folder")
    p.add_argument("--stage1", help="reasoning-scaffold records")
    p.add_argument("--stage2", help="knowledge records")
    p.add_argument("--stage3", help="fusion records")
    p.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct",
                   help="base model (default Qwen/Qwen2.5-7B-Instruct)")
    p.add_argument("--finetuning", choices=["lora", "full"], default="lora")
    p.add_argument("--template", default="qwen", help="LLaMA-Factory template (default qwen)")
    p.add_argument("--cutoff-len", type=int, default=8192, help="tokens per example (8192)")
    p.add_argument("--lr", action="append", metavar="STAGE=LR",
                   help="learning rate of a stage (repeatable)")
    p.add_argument("--epochs", action="append", metavar="STAGE=N",
                   help="epochs of a stage (repeatable)")
    p.add_argument("--deepspeed", help="DeepSpeed config for full fine-tuning")
    p.add_argument("--no-bf16", action="store_true",
                   help="train in float32 (CPUs and GPUs without bfloat16)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let llamafactory-cli run code from the model repository (off: "
                   "Qwen2.5 needs none)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..train.llamafactory import export_llamafactory

    stages = {n: f for n, f in ((1, args.stage1), (2, args.stage2), (3, args.stage3)) if f}
    if not stages:
        raise InputError("Give at least one of --stage1/--stage2/--stage3 with a records file.")
    exp = export_llamafactory(
        stages, args.output, model=args.model, finetuning=args.finetuning,
        template=args.template, cutoff_len=args.cutoff_len,
        learning_rates=_stage_values(args.lr, "lr"),
        epochs=_stage_values(args.epochs, "epochs"), deepspeed=args.deepspeed,
        bf16=not args.no_bf16, trust_remote_code=args.trust_remote_code,
    )
    print(f"wrote a LLaMA-Factory project to {exp.folder} (run.sh runs it); commands:")
    print(f"cd {exp.folder}")
    for cmd in exp.commands:
        print(cmd)
    print(f"final model: {exp.final_model}")
    return 0


# --- native training ------------------------------------------------------------------------
def _register_run(actions) -> None:
    p = actions.add_parser(
        "run", help="fine-tune one stage with TRL (LoRA or full)",
        description="Fine-tune a chat model on one stage's records with TRL SFTTrainer (loss on "
        "the answer only). OUTDIR receives the merged model (loadable by the transformers "
        "backend and by the next stage), the LoRA adapter, checkpoints and provenance.")
    p.add_argument("--stage", type=int, choices=[1, 2, 3], required=True,
                   help="1 reasoning scaffold, 2 knowledge infusion, 3 reasoning-mode fusion")
    p.add_argument("--model", required=True,
                   help="base model folder/hub id (stages 2-3: the previous stage's OUTDIR)")
    p.add_argument("--data", required=True, help="records (.json or .jsonl)")
    p.add_argument("--eval-data", help="held-out records: loss at each checkpoint and the end")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--finetuning", choices=["lora", "full"], default="lora")
    p.add_argument("--lr", type=float, help="learning rate (default per stage)")
    p.add_argument("--epochs", type=float, help="epochs (default 3/1/2 for stages 1/2/3)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps")
    p.add_argument("--batch-size", type=int, default=1, help="per-device batch (default 1)")
    p.add_argument("--grad-accum", type=int, default=16,
                   help="gradient accumulation steps (default 16)")
    p.add_argument("--max-length", type=int, default=8192,
                   help="longest example in tokens; longer ones are left out (default 8192)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--save-steps", type=int, default=200, help="checkpoint interval (200)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   default=True, help="recompute activations to save memory (default on)")
    p.add_argument("--no-merge", action="store_true",
                   help="LoRA: keep only the adapter (OUTDIR/adapter), no merged model")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in OUTDIR (or the one given)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUTDIR that holds an earlier run's checkpoints")
    p.add_argument("--progress", action="store_true", help="show the trainer's progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..train.sft import TrainConfig, train_sft

    cfg = TrainConfig(
        stage=args.stage, finetuning=args.finetuning, learning_rate=args.lr,
        num_train_epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, max_length=args.max_length,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        save_steps=args.save_steps, seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing, merge=not args.no_merge,
    )
    res = train_sft(args.model, args.data, args.output, cfg,
                    resume_from_checkpoint=args.resume, eval_data=args.eval_data,
                    overwrite=args.overwrite, progress=args.progress)
    summary = {"output_dir": str(res.output_dir), "stage": args.stage,
               "global_step": res.global_step, "train_loss": round(res.train_loss, 6),
               "examples": res.n_examples, "dropped_too_long": res.n_dropped,
               "resumed_from": res.resumed_from}
    if res.eval_losses:
        summary["eval_loss"] = round(res.eval_losses[-1], 6)
    print(json.dumps(summary))
    if res.has_full_model:
        n_genes = res.max_sentence_genes
        hint = f" --max-genes {n_genes}" if n_genes < 1000 else ""
        print(f"annotate with: cellreasoner annotate INPUT --backend transformers "
              f"--model {res.output_dir}{hint} -o out.h5ad  (use the sentence settings the "
              "training data was built with)")
    return 0
