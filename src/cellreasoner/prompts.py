"""The published CellReasoner prompt conventions (instructions, chat layout, sampling)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

_TASK = (
    "These are highly expressed genes within a certain type of tumor cells; please annotate the "
    "cell type based on these marker genes. Please infer the cell type based on the marker genes, "
)
#: Instruction of the direct-answer mode (byte-identical to upstream ``s02.build_dataset.py``).
INSTRUCTION_DIRECT = _TASK + "and directly give the final annotation result."
#: Instruction of the reasoning mode.
INSTRUCTION_REASONING = _TASK + "and place the reason within the <think></think> tag."


def instruction_for(reasoning: bool) -> str:
    """The upstream instruction for the chosen mode."""
    return INSTRUCTION_REASONING if reasoning else INSTRUCTION_DIRECT


@dataclass(frozen=True)
class Prompt:
    """One model query: a system instruction and a user message (the cell sentence)."""

    instruction: str
    sentence: str
    reasoning: bool = False

    def messages(self) -> list[dict[str, str]]:
        """Chat messages exactly as upstream ``utils.run_inference`` builds them."""
        return [
            {"role": "system", "content": self.instruction},
            {"role": "user", "content": self.sentence},
        ]

    def key(self) -> str:
        """Stable hash of the prompt content (used for deduplication and caching)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.instruction, self.sentence, self.reasoning]).encode())
        return h.hexdigest()


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings; defaults follow upstream CellReasoner (see ``for_mode``)."""

    temperature: float = 0.01
    top_p: float = 0.01
    repetition_penalty: float = 1.1
    max_new_tokens: int = 4096
    n: int = 1
    seed: int | None = 1234
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_mode(cls, reasoning: bool, **overrides) -> SamplingParams:
        """Upstream defaults: 0.01/0.01 (direct) or 0.6/0.4 (reasoning), then ``overrides``."""
        base = cls(temperature=0.6, top_p=0.4) if reasoning else cls()
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def render_chat_text(tokenizer, prompt: Prompt) -> str:
    """Prompt text for a Hugging Face tokenizer, as upstream CellReasoner renders it.

    The chat template is applied with the generation prompt, any ``<think>`` the template
    inserts is removed, and in reasoning mode ``"<think> "`` is appended.
    """
    text = tokenizer.apply_chat_template(
        prompt.messages(), tokenize=False, add_generation_prompt=True
    )
    text = text.replace("<think>", "")
    if prompt.reasoning:
        text += "<think> "
    return text
