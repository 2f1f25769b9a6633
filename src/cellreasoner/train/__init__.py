"""Training: the three-stage CellReasoner recipe (reasoning scaffold, knowledge, fusion).

Data builders (:mod:`.build`), records I/O (:mod:`.records`), native TRL/PEFT training
(:mod:`.sft`; the records' tokenization in :mod:`.tokens`) and LLaMA-Factory export
(:mod:`.llamafactory`). Heavy dependencies (torch, transformers, trl, peft, datasets) are the
``[train]`` extra and imported only when training.
"""

from __future__ import annotations

from .build import BuildResult, build_fusion, build_knowledge, build_reasoning
from .llamafactory import LlamaFactoryExport, export_llamafactory
from .records import format_reasoning_output, read_records, validate_records, write_records
from .sft import STAGES, TrainConfig, TrainResult, train_sft

__all__ = [
    "STAGES",
    "BuildResult",
    "LlamaFactoryExport",
    "TrainConfig",
    "TrainResult",
    "build_fusion",
    "build_knowledge",
    "build_reasoning",
    "export_llamafactory",
    "format_reasoning_output",
    "read_records",
    "train_sft",
    "validate_records",
    "write_records",
]
