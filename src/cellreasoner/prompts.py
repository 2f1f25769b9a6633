"""The published CellReasoner prompt conventions (instructions, chat layout, sampling)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import InputError

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


#: Prompt styles: ``"cellreasoner"`` is the published instruction, byte for byte (what the
#: fine-tuned CellReasoner models were trained on); ``"neutral"`` is for every other model,
#: which would take the published text literally ("cells ... of tumor cells") and answer
#: "tumor cell"; ``"auto"`` picks by model family (:func:`resolve_prompt_style`).
PROMPT_STYLES = ("auto", "cellreasoner", "neutral")

#: Named instructions for ``instruction=``: the upstream text of either mode, whatever the
#: mode (the notebook's published reasoning run used the direct text plus ``"<think> "``).
NAMED_INSTRUCTIONS = {"direct": INSTRUCTION_DIRECT, "reasoning": INSTRUCTION_REASONING}

#: Written by ``cellreasoner train`` beside a fine-tuned model (see :mod:`cellreasoner.train`).
_TRAINED_MARKER = "cellreasoner_train.json"


def resolve_prompt_style(style: str, model: str | None) -> str:
    """``"cellreasoner"`` or ``"neutral"`` for ``style`` and the backend's ``model``.

    ``"auto"`` is ``"cellreasoner"`` for a model whose name or path says CellReasoner
    (``guangshuo/CellReasoner-7B``, a GGUF conversion named after it) or a folder that
    ``cellreasoner train`` wrote (it holds ``cellreasoner_train.json``); any other model
    gets ``"neutral"``.
    """
    if style not in PROMPT_STYLES:
        raise InputError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, "
                         f"not {style!r}.")
    if style != "auto":
        return style
    name = str(model or "")
    if "cellreasoner" in name.lower().replace("-", "").replace("_", ""):
        return "cellreasoner"
    try:
        trained = bool(name) and (Path(name).expanduser() / _TRAINED_MARKER).is_file()
    except OSError:  # a hub id or an API model name is not a folder
        trained = False
    return "cellreasoner" if trained else "neutral"


#: What the accessibility option adds after the published instruction (ATAC input).
ACCESSIBILITY_NOTE = (" The genes are ranked by chromatin accessibility (scATAC-seq gene "
                      "activity: fragments over the gene body and promoter), not by RNA "
                      "expression.")


def neutral_instruction(reasoning: bool, tissue: str | None = None,
                        cluster: bool = False, accessibility: bool = False) -> str:
    """An instruction for general chat models: what the genes are, where the cells come
    from (``tissue``), and how to answer — nothing about tumours. ``accessibility``: the
    genes are ranked by chromatin accessibility (scATAC-seq gene activity)."""
    if accessibility:
        what = ("the top marker genes by gene activity of one cluster of cells" if cluster
                else "genes with the highest gene activity (chromatin accessibility over the "
                "gene body and promoter) in one cell")
        assay = "single-cell ATAC-seq"
    else:
        what = ("the top marker genes of one cluster of cells" if cluster
                else "genes expressed in one cell")
        assay = "single-cell RNA-seq"
    where = f" on human {tissue.strip()} tissue" if tissue and tissue.strip() else ""
    text = (f"You are an expert in single-cell transcriptomics. The user lists {what} in a "
            f"{assay} experiment{where}. Identify the cell type. ")
    if reasoning:
        return text + ("Reason step by step inside <think></think>, then after </think> "
                       "give only the cell type name.")
    return text + "Reply with the cell type name only, without explanation."


def resolve_instruction(instruction: str | None, *, reasoning: bool, style: str,
                        tissue: str | None = None, cluster: bool = False,
                        accessibility: bool = False) -> str:
    """The system instruction of a run.

    ``instruction`` is ``None`` (the style's text for the mode), ``"direct"`` /
    ``"reasoning"`` (the upstream text of that mode), or the path of a text file.
    In the CellReasoner style a tissue adds a sentence after the upstream text, and
    ``accessibility`` (default off) :data:`ACCESSIBILITY_NOTE` (the genes are ranked by
    chromatin accessibility); the neutral style says so in its own text.
    """
    if instruction is None:
        if style == "neutral":
            return neutral_instruction(reasoning, tissue, cluster, accessibility)
        text = instruction_for(reasoning)
    elif instruction in NAMED_INSTRUCTIONS:
        text = NAMED_INSTRUCTIONS[instruction]
    else:
        path = Path(os.fsdecode(instruction)).expanduser()
        if not path.is_file():
            raise InputError(f"instruction: {instruction!r} is neither 'direct', 'reasoning' nor "
                             "a readable text file. Pass one of those.")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"instruction file {path}: cannot read it as UTF-8 text "
                             f"({exc}).") from exc
        if not text:
            raise InputError(f"instruction file {path} is empty; write the system "
                             "instruction into it.")
        return text
    if accessibility:
        text += ACCESSIBILITY_NOTE
    if tissue and tissue.strip():
        text += f" The cells come from {tissue.strip()} tissue."
    return text


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
