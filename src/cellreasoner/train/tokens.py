"""Records to token ids, exactly as annotation renders them (for :mod:`.sft`).

Every record becomes the conversation upstream CellReasoner uses at inference — the instruction
as the system message, the cell sentence as the user message, the answer as the assistant turn —
rendered with the model's own chat template. The prompt part is rendered by
:func:`cellreasoner.prompts.render_chat_text`, the very function annotation uses, and tokenized as
the transformers backend tokenizes it (in reasoning mode the prompt ends with ``"<think> "`` and
the completion continues from there). The completion mask covers only the answer and the
end-of-turn token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import InputError
from ..prompts import Prompt, render_chat_text
from .records import THINK_OPEN, is_reasoning_record

log = logging.getLogger(__name__)


def _assistant_suffix(tokenizer) -> str:
    """The text the chat template puts after an assistant message (e.g. ``<|im_end|>\\n``)."""
    probe = "CELLREASONER_PROBE"
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    base = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        msgs + [{"role": "assistant", "content": probe}], tokenize=False
    )
    if full.startswith(base) and full[len(base):].startswith(probe):
        return full[len(base) + len(probe):]
    if tokenizer.eos_token is None:
        raise InputError("The tokenizer has neither a usable chat template nor an eos_token; "
                         "use a chat (instruct) model.")
    log.warning("The chat template renders the assistant turn differently from its generation "
                "prompt; ending answers with the eos token %r instead.", tokenizer.eos_token)
    return tokenizer.eos_token


def completion_text(record: dict, suffix: str) -> str:
    """The trained part of a record: the answer (after the prompt's ``<think> ``) + ``suffix``.

    Parameters
    ----------
    record
        A training record.
    suffix
        The text the chat template ends an assistant turn with.

    Returns
    -------
    str
    """
    output = record["output"]
    if is_reasoning_record(record):
        stripped = output.lstrip()
        if stripped.startswith(THINK_OPEN):
            output = stripped[len(THINK_OPEN):].lstrip()
    return output + suffix


def tokenize_records(records: Sequence[dict], tokenizer, max_length: int
                     ) -> tuple[dict[str, list], int]:
    """Token ids and completion masks of records, as annotation renders their prompts.

    Parameters
    ----------
    records
        Training records (see :mod:`.records`).
    tokenizer
        The model's Hugging Face tokenizer (it needs a chat template).
    max_length
        Records longer than this many tokens (prompt + completion) are left out.

    Returns
    -------
    columns, n_dropped
        ``{"input_ids": [...], "completion_mask": [...]}`` and the number of records left out
        because they exceed ``max_length`` tokens.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise InputError("The model's tokenizer has no chat template; train an instruct/chat "
                         "model (e.g. Qwen2.5-7B-Instruct).")
    suffix = _assistant_suffix(tokenizer)
    ids, masks, dropped = [], [], 0
    for start in range(0, len(records), 1024):  # batched: the fast tokenizer runs in parallel
        chunk = records[start:start + 1024]
        prompts = [render_chat_text(tokenizer, Prompt(r["instruction"], r["input"],
                                                      is_reasoning_record(r)))
                   for r in chunk]
        # the prompt is tokenized exactly as the transformers backend tokenizes it
        p_all = tokenizer(prompts)["input_ids"]
        c_all = tokenizer([completion_text(r, suffix) for r in chunk],
                          add_special_tokens=False)["input_ids"]
        for p_ids, c_ids in zip(p_all, c_all, strict=True):
            if len(p_ids) + len(c_ids) > max_length:
                dropped += 1
                continue
            ids.append(list(p_ids) + list(c_ids))
            masks.append([0] * len(p_ids) + [1] * len(c_ids))
    if dropped:
        log.warning("%d of %d records are longer than max_length=%d tokens and were left out "
                    "(raise max_length or build sentences with fewer genes).",
                    dropped, len(records), max_length)
    if not ids:
        raise InputError(f"Every record is longer than max_length={max_length} tokens; raise "
                         "max_length or build sentences with a smaller max_genes.")
    return {"input_ids": ids, "completion_mask": masks}, dropped
