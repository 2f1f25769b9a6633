"""Export the three CellReasoner stages as a ready-to-run LLaMA-Factory project.

Upstream CellReasoner trained Qwen2.5-7B-Instruct with LLaMA-Factory. This writes, into one
folder, each stage's dataset, the ``dataset_info.json`` that registers them, one training YAML
per stage (and, for LoRA, one merge/export YAML), and a ``run.sh`` with the
``llamafactory-cli`` commands in order.

Chat layout. At inference upstream CellReasoner sends the instruction as the **system** message
and the cell sentence as the **user** message. LLaMA-Factory's default alpaca mapping would put
``instruction`` + ``input`` together in the user turn, so the datasets are registered in alpaca
format with an explicit column mapping instead::

    "columns": {"system": "instruction", "prompt": "input", "response": "output"}

(with a ``columns`` object LLaMA-Factory sets every unnamed column, ``query`` included, to
none), which trains on exactly the conversation annotate renders, while the dataset files keep
the upstream record layout (``cell_name``/``instruction``/``input``/``output``).

Chaining. Stage ``N + 1`` starts from stage ``N``'s weights: with full fine-tuning its
``model_name_or_path`` is stage ``N``'s ``output_dir``; with LoRA, stage ``N``'s adapter is first
merged (``llamafactory-cli export``) into ``models/stageN`` and stage ``N + 1`` trains a fresh
adapter on top of it — the same scheme as the native trainer.

All paths inside the folder are relative to it; ``run.sh`` changes into the folder first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.write import atomic_path
from .records import load_records, write_records
from .sft import DEFAULT_EPOCHS, DEFAULT_LR, FINETUNING, STAGES

#: The base model of the published CellReasoner.
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-7B-Instruct"
#: Column mapping of every exported dataset (see the module docstring).
DATASET_COLUMNS = {"system": "instruction", "prompt": "input", "response": "output"}
DATA_DIR = "data"
DATASET_INFO = "dataset_info.json"
MANIFEST = "cellreasoner_export.json"


@dataclass
class StageExport:
    """Files and paths of one exported stage (paths relative to the export folder)."""

    stage: int
    dataset: str
    dataset_file: str
    n_records: int
    model: str
    train_yaml: str
    output_dir: str
    merge_yaml: str | None = None
    merged_dir: str | None = None

    @property
    def result_model(self) -> str:
        """The folder holding this stage's full model (what the next stage starts from)."""
        return self.merged_dir or self.output_dir


@dataclass
class LlamaFactoryExport:
    """An exported LLaMA-Factory project."""

    folder: Path
    stages: list[StageExport] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def final_model(self) -> Path:
        """The folder the last stage's full model will be written to."""
        return self.folder / self.stages[-1].result_model


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:  # YAML 1.1 floats need a dot and a signed exponent: 5.0e-05
            mantissa, _, exp = text.partition("e")
            if "." not in mantissa:
                mantissa += ".0"
            text = f"{mantissa}e{exp if exp[0] in '+-' else '+' + exp}"
        return text
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _yaml(sections: Sequence[tuple[str, Mapping]]) -> str:
    """Flat LLaMA-Factory YAML with ``### section`` comments (no PyYAML needed)."""
    lines = []
    for title, items in sections:
        lines.append(f"### {title}")
        lines += [f"{k}: {_yaml_scalar(v)}" for k, v in items.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def export_llamafactory(
    stages: Mapping[int, str | os.PathLike | Sequence[dict]],
    folder: str | os.PathLike,
    *,
    model: str = DEFAULT_BASE_MODEL,
    finetuning: str = "lora",
    template: str = "qwen",
    cutoff_len: int = 8192,
    learning_rates: Mapping[int, float] | None = None,
    epochs: Mapping[int, float] | None = None,
    batch_size: int = 1,
    gradient_accumulation_steps: int = 8,
    lora_rank: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    bf16: bool = True,
    deepspeed: str | None = None,
    save_steps: int = 200,
    dataset_prefix: str = "cellreasoner",
    trust_remote_code: bool = False,
) -> LlamaFactoryExport:
    """Write datasets, ``dataset_info.json``, per-stage YAML and ``run.sh`` to ``folder``.

    Parameters
    ----------
    stages
        ``{stage: records or file}`` for any of 1 (reasoning scaffold), 2 (knowledge
        infusion), 3 (reasoning-mode fusion); they run in stage order, each from the previous.
    folder
        The export folder (created).
    model
        Base model of the first exported stage (default ``Qwen/Qwen2.5-7B-Instruct``).
    finetuning
        ``"lora"`` (default) or ``"full"``.
    template
        LLaMA-Factory chat template (default ``"qwen"``, Qwen2.5's).
    cutoff_len
        Token limit per example (default 8192, the upstream inference limit: a 1,000-gene
        sentence is some 4,000-5,000 Qwen2.5 tokens, plus a reasoning trace).
    learning_rates, epochs
        Per-stage overrides; defaults as the native trainer (LoRA 1e-4/1e-4/5e-5, full
        1e-5/1e-5/5e-6; 3/1/2 epochs).
    batch_size, gradient_accumulation_steps
        Per-device batch (default 1) and accumulation (default 8).
    lora_rank, lora_alpha, lora_dropout
        LoRA settings (16, 32, 0.05; ``lora_target: all``).
    bf16
        bfloat16 training (default True).
    deepspeed
        A DeepSpeed config path for full fine-tuning (e.g. LLaMA-Factory's
        ``examples/deepspeed/ds_z3_config.json``; default None).
    save_steps
        Checkpoint interval (default 200).
    dataset_prefix
        Prefix of the dataset names (default ``"cellreasoner"``).
    trust_remote_code
        Let ``llamafactory-cli`` run Python code shipped in the model repository (default
        False: Qwen2.5 needs none, and code from a repository is not run unless asked).

    Returns
    -------
    LlamaFactoryExport
        The stages' files and the commands (also written to ``run.sh``).
    """
    _check_stages(stages, finetuning)
    settings = _Settings(
        finetuning=finetuning, template=template, cutoff_len=cutoff_len,
        learning_rates=dict(learning_rates or {}), epochs=dict(epochs or {}),
        batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bf16=bf16,
        deepspeed=deepspeed, save_steps=save_steps, trust_remote_code=bool(trust_remote_code))
    root = Path(folder)
    (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
    info_path = root / DATA_DIR / DATASET_INFO
    dataset_info = json.loads(info_path.read_text()) if info_path.is_file() else {}

    export = LlamaFactoryExport(folder=root)
    current = model
    for stage in sorted(stages):
        records = load_records(stages[stage])
        slug = STAGES[stage].replace(" ", "_").replace("-", "_")
        name = f"{dataset_prefix}_stage{stage}_{slug}"
        file_name = f"{name}.json"
        write_records(records, root / DATA_DIR / file_name)
        dataset_info[name] = {"file_name": file_name, "formatting": "alpaca",
                              "columns": dict(DATASET_COLUMNS)}
        entry = _write_stage_yaml(root, stage, name, len(records), current, settings,
                                  export.commands)
        export.stages.append(entry)
        current = entry.result_model

    with atomic_path(info_path) as tmp:
        tmp.write_text(json.dumps(dataset_info, indent=2))
    _write_run_files(root, export, model, finetuning, template)
    return export


@dataclass(frozen=True)
class _Settings:
    """The training settings every stage's YAML shares."""

    finetuning: str
    template: str
    cutoff_len: int
    learning_rates: dict[int, float]
    epochs: dict[int, float]
    batch_size: int
    gradient_accumulation_steps: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    bf16: bool
    deepspeed: str | None
    save_steps: int
    trust_remote_code: bool = False


def _check_stages(stages: Mapping[int, object], finetuning: str) -> None:
    if finetuning not in FINETUNING:
        raise InputError(f"finetuning must be one of {FINETUNING}, not {finetuning!r}.")
    if not stages:
        raise InputError("Give at least one stage's data, e.g. {2: 'knowledge.json'}.")
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise InputError(f"Unknown stage(s) {bad}; stages are {STAGES}.")


def _train_yaml(stage: int, dataset: str, model: str, output_dir: str, s: _Settings) -> str:
    """The ``llamafactory-cli train`` YAML of one stage."""
    method = {"stage": "sft", "do_train": True, "finetuning_type": s.finetuning}
    if s.finetuning == "lora":
        method |= {"lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha,
                   "lora_dropout": s.lora_dropout, "lora_target": "all"}
    elif s.deepspeed:
        method["deepspeed"] = s.deepspeed
    text = _yaml([
        ("model", {"model_name_or_path": model, "trust_remote_code": s.trust_remote_code}),
        ("method", method),
        ("dataset", {"dataset": dataset, "dataset_dir": DATA_DIR, "template": s.template,
                     "cutoff_len": s.cutoff_len, "overwrite_cache": True,
                     "preprocessing_num_workers": 8}),
        ("output", {"output_dir": output_dir, "logging_steps": 10,
                    "save_steps": s.save_steps, "plot_loss": True,
                    "overwrite_output_dir": True, "report_to": "none"}),
        ("train", {"per_device_train_batch_size": s.batch_size,
                   "gradient_accumulation_steps": s.gradient_accumulation_steps,
                   "learning_rate": float(s.learning_rates.get(
                       stage, DEFAULT_LR[(s.finetuning, stage)])),
                   "num_train_epochs": float(s.epochs.get(stage, DEFAULT_EPOCHS[stage])),
                   "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": s.bf16,
                   "ddp_timeout": 180000000}),
    ])
    return f"# CellReasoner stage {stage}: {STAGES[stage]}\n{text}"


def _merge_yaml(stage: int, model: str, adapter_dir: str, export_dir: str, template: str,
                trust_remote_code: bool = False) -> str:
    """The ``llamafactory-cli export`` YAML merging one stage's LoRA adapter."""
    merge = _yaml([
        ("model", {"model_name_or_path": model, "adapter_name_or_path": adapter_dir,
                   "template": template, "finetuning_type": "lora",
                   "trust_remote_code": trust_remote_code}),
        ("export", {"export_dir": export_dir, "export_size": 5,
                    "export_device": "cpu", "export_legacy_format": False}),
    ])
    return f"# Merge the stage {stage} LoRA adapter into a full model\n{merge}"


def _write_stage_yaml(root: Path, stage: int, dataset: str, n_records: int, model: str,
                      s: _Settings, commands: list[str]) -> StageExport:
    """Write one stage's training (and LoRA merge) YAML; append its commands."""
    output_dir = f"saves/stage{stage}"
    train_yaml = f"stage{stage}_train.yaml"
    (root / train_yaml).write_text(_train_yaml(stage, dataset, model, output_dir, s))
    entry = StageExport(stage=stage, dataset=dataset,
                        dataset_file=f"{DATA_DIR}/{dataset}.json", n_records=n_records,
                        model=model, train_yaml=train_yaml, output_dir=output_dir)
    commands.append(f"llamafactory-cli train {train_yaml}")
    if s.finetuning == "lora":
        entry.merge_yaml = f"stage{stage}_merge.yaml"
        entry.merged_dir = f"models/stage{stage}"
        (root / entry.merge_yaml).write_text(
            _merge_yaml(stage, model, output_dir, entry.merged_dir, s.template,
                        s.trust_remote_code))
        commands.append(f"llamafactory-cli export {entry.merge_yaml}")
    return entry


def _write_run_files(root: Path, export: LlamaFactoryExport, model: str, finetuning: str,
                     template: str) -> None:
    """Write ``run.sh`` (the commands in order) and the export manifest."""
    (root / "run.sh").write_text(
        "#!/usr/bin/env bash\n# CellReasoner training with LLaMA-Factory "
        "(pip install llamafactory)\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n"
        + "\n".join(export.commands) + "\n")
    (root / "run.sh").chmod(0o755)
    manifest = {"base_model": model, "finetuning": finetuning, "template": template,
                "final_model": export.stages[-1].result_model,
                "stages": [vars(s) for s in export.stages], "commands": export.commands}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
