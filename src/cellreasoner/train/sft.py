"""Native supervised fine-tuning with TRL ``SFTTrainer`` (+ PEFT LoRA), one call per stage.

Every record becomes the conversation upstream CellReasoner uses at inference — the instruction
as the system message, the cell sentence as the user message, the answer as the assistant turn —
rendered with the model's own chat template (:mod:`.tokens`). The prompt part is rendered by
:func:`cellreasoner.prompts.render_chat_text`, the very function annotation uses, so the tokens
the model is trained on are the tokens it sees when it annotates (in reasoning mode the prompt
ends with ``"<think> "`` and the completion continues from there). The loss covers only the
completion (answer + end-of-turn token): the dataset is handed to TRL pre-tokenized with a
``completion_mask`` and ``completion_only_loss=True``. (TRL's own conversational
prompt-completion path would render the prompt without the ``"<think> "`` that reasoning-mode
inference appends, and re-split tokens at the prompt/answer boundary; pre-tokenizing keeps
training and annotation token-identical.)

Output folder layout (``output_dir``)::

    config.json, model.safetensors, tokenizer files   # the merged model, loadable as is
    cellreasoner_train.json                           # provenance: stage, data, settings, losses
    adapter/                                          # the LoRA adapter (LoRA runs only)
    checkpoints/checkpoint-N/                         # resumable trainer checkpoints
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InputError, require
from .records import is_reasoning_record, load_records
from .tokens import tokenize_records

log = logging.getLogger(__name__)

#: The three CellReasoner stages.
STAGES = {
    1: "reasoning scaffold",
    2: "knowledge infusion",
    3: "reasoning-mode fusion",
}
FINETUNING = ("lora", "full")
#: Default learning rates per (fine-tuning type, stage).
DEFAULT_LR = {
    ("lora", 1): 1e-4, ("lora", 2): 1e-4, ("lora", 3): 5e-5,
    ("full", 1): 1e-5, ("full", 2): 1e-5, ("full", 3): 5e-6,
}
#: Default epochs per stage (few expert samples: more passes; broad data: one pass).
DEFAULT_EPOCHS = {1: 3.0, 2: 1.0, 3: 2.0}
PROVENANCE_FILE = "cellreasoner_train.json"
CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


@dataclass
class TrainConfig:
    """Settings of one training stage.

    Parameters
    ----------
    stage
        1 (reasoning scaffold), 2 (knowledge infusion) or 3 (reasoning-mode fusion); default 2.
        Picks the default learning rate and epochs.
    finetuning
        ``"lora"`` (default) or ``"full"``.
    learning_rate, num_train_epochs
        Default: per stage and fine-tuning type (:data:`DEFAULT_LR`, :data:`DEFAULT_EPOCHS`).
    max_steps
        Stop after this many optimizer steps (default -1: run the epochs).
    batch_size, gradient_accumulation_steps
        Per-device batch size (default 1) and accumulation (default 16).
    max_length
        Longest tokenized example (default 8192, the upstream inference limit: a 1,000-gene
        sentence is some 4,000-5,000 Qwen2.5 tokens, plus a reasoning trace); longer examples
        are left out with a warning.
    lora_r, lora_alpha, lora_dropout, lora_target
        LoRA rank (16), alpha (32), dropout (0.05) and target modules (``"all-linear"``).
    warmup_ratio, lr_scheduler_type, weight_decay
        0.03, ``"cosine"``, 0.0.
    save_steps, save_total_limit, logging_steps
        Checkpoint every 200 steps, keep 2; log every 10 steps.
    seed
        Seed of the weights' LoRA init, dropout and data order (default 42).
    bf16
        bfloat16 training; default: when a CUDA GPU supports it.
    gradient_checkpointing
        Recompute activations to save memory (default True, needed for long sentences on a
        7B model; turn off for small models).
    merge
        Merge the LoRA adapter into the weights and save a full model (default True).
    target_loss
        Stop early once a logged training loss falls below this value (default None: run all
        steps).
    extra
        More ``trl.SFTConfig`` arguments, passed as is (default none).
    """

    stage: int = 2
    finetuning: str = "lora"
    learning_rate: float | None = None
    num_train_epochs: float | None = None
    max_steps: int = -1
    batch_size: int = 1
    gradient_accumulation_steps: int = 16
    max_length: int = 8192
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str | list[str] = "all-linear"
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    save_steps: int = 200
    save_total_limit: int | None = 2
    logging_steps: int = 10
    seed: int = 42
    bf16: bool | None = None
    gradient_checkpointing: bool = True
    merge: bool = True
    target_loss: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InputError(f"stage must be 1, 2 or 3 ({STAGES}), not {self.stage!r}.")
        if self.finetuning not in FINETUNING:
            raise InputError(f"finetuning must be one of {FINETUNING}, not {self.finetuning!r}.")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise InputError("batch_size and gradient_accumulation_steps must be at least 1.")

    @property
    def lr(self) -> float:
        """The learning rate in effect."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR[(self.finetuning, self.stage)]

    @property
    def epochs(self) -> float:
        """The number of epochs in effect."""
        return self.num_train_epochs if self.num_train_epochs is not None \
            else DEFAULT_EPOCHS[self.stage]


@dataclass
class TrainResult:
    """What a training run produced.

    ``max_sentence_genes`` is the longest cell sentence of the training data, in genes:
    annotate with that ``max_genes``. ``has_full_model`` says whether ``output_dir`` holds a
    full model (full fine-tuning, or a merged LoRA adapter) that annotation can load.
    """

    output_dir: Path
    global_step: int
    train_loss: float
    log_history: list[dict]
    n_examples: int
    n_dropped: int
    adapter_dir: Path | None = None
    resumed_from: str | None = None
    max_sentence_genes: int = 0
    has_full_model: bool = True

    @property
    def losses(self) -> list[float]:
        """The logged training losses, in order."""
        return [float(h["loss"]) for h in self.log_history if "loss" in h]

    @property
    def eval_losses(self) -> list[float]:
        """The held-out losses (with ``eval_data``), in order; the last is the final model's."""
        return [float(h["eval_loss"]) for h in self.log_history if "eval_loss" in h]


# --- training ---------------------------------------------------------------------------
def _target_loss_callback(transformers, target: float):
    """A callback that stops training once a logged loss is below ``target``."""

    class _StopAtLoss(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and float(logs["loss"]) < target:
                control.should_training_stop = True
            return control

    return _StopAtLoss()


def _latest_checkpoint(ckpt_root: Path) -> str | None:
    if not ckpt_root.is_dir():
        return None
    found = [p for p in ckpt_root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    if not found:
        return None
    return str(max(found, key=lambda p: int(p.name.split("-")[-1])))


def _data_fingerprint(records: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r["instruction"], r["input"], r["output"]]).encode())
    return h.hexdigest()


def sentence_genes(records: Sequence[dict]) -> int:
    """The longest cell sentence (in genes) of the records: annotate with that ``max_genes``."""
    return max((r["input"].count(", ") + 1 for r in records), default=0)


def _version_args(config_cls, config: TrainConfig) -> dict:
    """Arguments whose names changed across transformers versions."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    out = {}
    # transformers 5: warmup_steps < 1 is a ratio and warmup_ratio is gone
    if "warmup_ratio" in names:
        out["warmup_ratio"] = config.warmup_ratio
    else:
        out["warmup_steps"] = config.warmup_ratio
    # transformers 5: gradient_checkpointing became activation_checkpointing (TRL's default on)
    key = "activation_checkpointing" if "activation_checkpointing" in names \
        else "gradient_checkpointing"
    out[key] = config.gradient_checkpointing
    return out


def _check_stage_data(stage: int, records: Sequence[dict]) -> None:
    """Warn when a stage's data lacks the mode the stage teaches."""
    n_reasoning = sum(is_reasoning_record(r) for r in records)
    if stage == 1 and n_reasoning == 0:
        log.warning("Stage 1 (reasoning scaffold) data holds no reasoning records; build them "
                    "with build_reasoning.")
    if stage == 3 and n_reasoning in (0, len(records)):
        log.warning("Stage 3 (reasoning-mode fusion) data holds only one mode; build it with "
                    "build_fusion so the model keeps both.")


def _use_bf16(config: TrainConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def train_sft(
    model: str | os.PathLike,
    data: str | os.PathLike | Sequence[dict],
    output_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume_from_checkpoint: bool | str | None = None,
    eval_data: str | os.PathLike | Sequence[dict] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Fine-tune a chat model on CellReasoner records (one stage).

    Parameters
    ----------
    model
        A Hugging Face model folder or hub id (for stages 2 and 3: the previous stage's
        ``output_dir``).
    data
        Records (list of dicts) or a JSON/JSONL file of them (see :mod:`.records`).
    output_dir
        Where the final model, the adapter, checkpoints and provenance are written.
    config
        :class:`TrainConfig` (default: ``TrainConfig()``, stage 2 LoRA).
    resume_from_checkpoint
        ``True``: continue from the latest checkpoint in ``output_dir/checkpoints`` (an error
        when there is none); a path: from that checkpoint; default: start fresh.
    eval_data
        Held-out records (e.g. ``build_knowledge``'s test split): their loss is computed at
        every checkpoint and at the end (default None: no evaluation).
    overwrite
        Starting fresh in a folder that holds checkpoints of an earlier run is an error unless
        this is True, which deletes them first (default False).
    progress
        Show the trainer's progress bar (default False).

    Returns
    -------
    TrainResult
    """
    config = config or TrainConfig()
    trl, transformers = _require_training()
    from datasets import Dataset

    records = load_records(data)
    _check_stage_data(config.stage, records)
    out = Path(output_dir)
    ckpt_root = out / CHECKPOINT_DIR
    resume = _resume_point(ckpt_root, resume_from_checkpoint, overwrite)

    tokenizer = _load_tokenizer(transformers, model)
    columns, dropped = tokenize_records(records, tokenizer, config.max_length)
    dataset = Dataset.from_dict(columns)
    eval_dataset = None
    if eval_data is not None:
        eval_columns, _ = tokenize_records(load_records(eval_data), tokenizer, config.max_length)
        eval_dataset = Dataset.from_dict(eval_columns)

    bf16 = _use_bf16(config)
    model_obj = _load_model(transformers, model, bf16)
    trainer = trl.SFTTrainer(
        model=model_obj,
        args=_sft_config(trl, config, ckpt_root, bf16, eval_dataset is not None, progress),
        train_dataset=dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(config),
        callbacks=[_target_loss_callback(transformers, config.target_loss)]
        if config.target_loss is not None else None,
    )
    output = trainer.train(resume_from_checkpoint=resume)
    if eval_dataset is not None:
        trainer.evaluate()  # the final model's held-out loss, logged into the history
    history = list(trainer.state.log_history)

    adapter_dir = out / ADAPTER_DIR if config.finetuning == "lora" else None
    if trainer.is_world_process_zero():  # one writer under multi-GPU launches
        _save_model(trainer.model, tokenizer, out, adapter_dir, config)
        provenance = {
            "stage": config.stage,
            "stage_name": STAGES[config.stage],
            "base_model": str(model),
            "n_records": len(records),
            "n_trained": len(columns["input_ids"]),
            "n_dropped": dropped,
            "max_sentence_genes": sentence_genes(records),
            "data_sha256": _data_fingerprint(records),
            "config": asdict(config) | {"learning_rate": config.lr,
                                        "num_train_epochs": config.epochs},
            "global_step": trainer.state.global_step,
            "train_loss": float(output.training_loss),
            "resumed_from": resume,
            "log_history": history,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
        }
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, default=str))
    return TrainResult(
        output_dir=out, global_step=trainer.state.global_step,
        train_loss=float(output.training_loss), log_history=history,
        n_examples=len(columns["input_ids"]), n_dropped=dropped, adapter_dir=adapter_dir,
        resumed_from=resume, max_sentence_genes=sentence_genes(records),
        has_full_model=config.finetuning == "full" or config.merge,
    )


def _require_training():
    """The ``trl`` and ``transformers`` modules, after checking every ``[train]`` dependency."""
    require("datasets", "train", "Training")
    require("accelerate", "train", "Training")
    require("peft", "train", "LoRA training")
    trl = require("trl", "train", "Training")
    transformers = require("transformers", "train", "Training")
    return trl, transformers


def _resume_point(ckpt_root: Path, resume_from_checkpoint: bool | str | None,
                  overwrite: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh, after clearing an earlier run's
    checkpoints when ``overwrite``)."""
    if resume_from_checkpoint is True:
        resume = _latest_checkpoint(ckpt_root)
        if resume is None:
            raise InputError(f"No checkpoint to resume from in {ckpt_root}; run without "
                             "--resume to start fresh.")
        return resume
    if resume_from_checkpoint:
        resume = str(resume_from_checkpoint)
        if not Path(resume).is_dir():
            raise InputError(f"Checkpoint folder not found: {resume}.")
        return resume
    if _latest_checkpoint(ckpt_root) is not None:
        if not overwrite:
            raise InputError(f"{ckpt_root} holds checkpoints of an earlier run. Continue it with "
                             "--resume (resume_from_checkpoint=True), or start over with "
                             "--overwrite (overwrite=True) or another output folder.")
        import shutil

        shutil.rmtree(ckpt_root)
    return None


def _load_tokenizer(transformers, model: str | os.PathLike):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot load a tokenizer from '{model}' ({exc}). Pass a local model "
                         "folder or a reachable Hugging Face model id.") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(transformers, model: str | os.PathLike, bf16: bool):
    import torch

    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(model), dtype=torch.bfloat16 if bf16 else torch.float32
        )
    except OSError as exc:
        raise InputError(f"Cannot load the model weights from '{model}' ({exc}).") from None


def _lora_config(config: TrainConfig):
    """The PEFT ``LoraConfig`` of a LoRA run (None for full fine-tuning)."""
    if config.finetuning != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.lora_target, task_type="CAUSAL_LM",
    )


def _sft_config(trl, config: TrainConfig, ckpt_root: Path, bf16: bool, evaluate: bool,
                progress: bool):
    """The ``trl.SFTConfig`` of a run."""
    import torch

    return trl.SFTConfig(
        output_dir=str(ckpt_root),
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=config.save_steps,
        per_device_eval_batch_size=config.batch_size,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        max_length=None,  # over-long examples are already left out, never cut mid-answer
        completion_only_loss=True,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **_version_args(trl.SFTConfig, config),
        **config.extra,
    )


def _save_model(trained, tokenizer, out: Path, adapter_dir: Path | None,
                config: TrainConfig) -> None:
    """Save the LoRA adapter (LoRA runs) and the full model (full runs, or merged LoRA)."""
    out.mkdir(parents=True, exist_ok=True)
    if adapter_dir is not None:
        trained.save_pretrained(adapter_dir)
        tokenizer.save_pretrained(adapter_dir)
        if config.merge:
            trained = trained.merge_and_unload()
    if config.finetuning == "full" or config.merge:
        trained.save_pretrained(out)
        tokenizer.save_pretrained(out)
