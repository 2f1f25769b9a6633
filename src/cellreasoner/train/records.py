"""SFT records: the upstream/alpaca layout shared by every builder, exporter and trainer.

A record is a dict with ``instruction`` (the system message: one of the two upstream
instructions), ``input`` (the cell sentence, the user message), ``output`` (the answer: a label,
or ``"<think> reasoning </think> label"`` in reasoning mode) and optionally ``cell_name`` and
``label`` (the plain ground-truth label, kept for balancing and auditing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import InputError
from ..prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING

#: Fields every training record must carry.
REQUIRED_FIELDS = ("instruction", "input", "output")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def format_reasoning_output(reasoning: str, answer: str) -> str:
    """The assistant text of a reasoning record: ``"<think> {reasoning} </think> {answer}"``.

    The leading ``"<think> "`` matches what :func:`cellreasoner.prompts.render_chat_text` appends
    to a reasoning-mode prompt, so the model continues exactly where inference starts it.
    """
    reasoning = reasoning.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()
    return f"{THINK_OPEN} {reasoning} {THINK_CLOSE} {answer.strip()}"


def is_reasoning_record(record: dict) -> bool:
    """Whether a record is in reasoning mode (the reasoning instruction, possibly followed by
    annotate's tissue sentence)."""
    return str(record.get("instruction", "")).startswith(INSTRUCTION_REASONING)


def is_direct_record(record: dict) -> bool:
    """Whether a record uses the direct-answer instruction (possibly with a tissue sentence)."""
    return str(record.get("instruction", "")).startswith(INSTRUCTION_DIRECT)


def validate_records(records: Sequence[dict], source: str = "records") -> list[dict]:
    """Check the upstream layout; raise :class:`InputError` naming the first bad record.

    Reasoning records (reasoning instruction) must have an output with ``</think>``; direct
    records must not.
    """
    out = []
    if not records:
        raise InputError(f"{source} holds no records; build them with `cellreasoner train "
                         "build-knowledge|build-reasoning|build-fusion`.")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InputError(f"{source}: record {i} is a {type(rec).__name__}, not an object with "
                             f"fields {', '.join(REQUIRED_FIELDS)}.")
        missing = [f for f in REQUIRED_FIELDS if not isinstance(rec.get(f), str) or not rec[f]]
        if missing:
            raise InputError(f"{source}: record {i} ({rec.get('cell_name', 'no cell_name')}) has "
                             f"no text in field(s) {', '.join(missing)}; every record needs "
                             f"{', '.join(REQUIRED_FIELDS)}.")
        if not (is_direct_record(rec) or is_reasoning_record(rec)):
            # custom instructions are allowed (other tasks), the mode checks are then skipped
            out.append(rec)
            continue
        has_think = THINK_CLOSE in rec["output"]
        if is_reasoning_record(rec) and not has_think:
            raise InputError(f"{source}: record {i} uses the reasoning instruction but its output "
                             "has no </think>; format it with format_reasoning_output.")
        if not is_reasoning_record(rec) and has_think:
            raise InputError(f"{source}: record {i} uses the direct-answer instruction but its "
                             "output holds reasoning (</think>); use the reasoning instruction.")
        out.append(rec)
    return out


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read records from upstream JSON (a list) or JSON Lines; validated."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Training data file not found: {p}.")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p} is not valid JSON ({exc}); expected a list of records with "
                         f"{', '.join(REQUIRED_FIELDS)} (or JSON Lines with .jsonl).") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise InputError(f"{p} must hold a JSON list of records.")
    return validate_records(records, str(p))


def write_records(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write records atomically: JSON list (``indent=4``, as upstream) or ``.jsonl``."""
    from ..io.write import atomic_path

    p = Path(path)
    records = list(records)
    with atomic_path(p) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        if p.suffix == ".jsonl":
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            json.dump(records, fh, indent=4, ensure_ascii=False)
    return p


def load_records(data: str | os.PathLike | Sequence[dict]) -> list[dict]:
    """Records from a file path or an in-memory list (validated either way)."""
    if isinstance(data, (str, os.PathLike)):
        return read_records(data)
    return validate_records(list(data))
