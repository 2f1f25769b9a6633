"""Build a tiny, deterministic Qwen2 chat model for tests (no download, a few seconds on CPU).

The model has random weights (it answers nonsense), but every other part is real: a
``Qwen2ForCausalLM`` saved with ``save_pretrained``, a byte-level BPE tokenizer whose
vocabulary covers the ranked gene symbols, cell-type words and the CellReasoner instructions,
and a Qwen2.5-style chat template. Backend, server and training tests load it like any
Hugging Face model folder::

    from tiny_model import build_tiny_qwen2, serve_transformers
    path = build_tiny_qwen2(tmp_path / "tiny")
    with serve_transformers(path, tmp_path / "serve") as (base_url, log):
        ...  # an OpenAI-compatible server on 127.0.0.1
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

#: Chat special tokens, named as in Qwen2.5.
IM_START, IM_END, EOS = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]

#: Split pattern of the Qwen2 tokenizer (digits are single tokens, as in Qwen2.5).
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Default system prompt of the Qwen2.5 template, used when no system message is given.
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

#: Qwen2.5-style chat template (without the tool-calling branches).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Cell-type names (pbmc68k ``bulk_labels``, the PBMC demo annotations, common types).
CELL_TYPES = [
    "CD14+ Monocyte", "CD19+ B", "CD34+", "CD4+/CD25 T Reg", "CD4+/CD45RA+/CD25- Naive T",
    "CD4+/CD45RO+ Memory", "CD56+ NK", "CD8+ Cytotoxic T", "CD8+/CD45RA+ Naive Cytotoxic",
    "Dendritic", "Naive CD4 T", "Memory CD4 T", "CD14+ Mono", "FCGR3A+ Mono", "CD8 T", "NK",
    "DC", "Platelet", "B cell", "T cell", "NK cell", "monocyte", "macrophage", "dendritic cell",
    "plasma cell", "megakaryocyte", "erythrocyte", "fibroblast", "endothelial cell",
    "epithelial cell", "tumor cell", "malignant cell", "naive", "memory", "cytotoxic",
    "regulatory", "classical", "non-classical",
]

#: Extra words a reasoning answer uses.
REASONING_WORDS = (
    "The cell expresses markers such as which indicate a suggests that is likely therefore "
    "final annotation result cell type high expression of and the genes are"
)


def _corpus(genes: Sequence[str]) -> list[str]:
    from cellreasoner.prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING

    lines = [INSTRUCTION_DIRECT, INSTRUCTION_REASONING, DEFAULT_SYSTEM, REASONING_WORDS]
    lines += [f"{THINK_OPEN} {REASONING_WORDS} {THINK_CLOSE} {c}" for c in CELL_TYPES]
    lines += ["system", "user", "assistant", "\n"]
    # genes as they occur in a cell sentence (", "-joined) and alone (first gene of a sentence)
    lines += [", ".join(genes[i:i + 50]) for i in range(0, len(genes), 50)]
    lines += list(genes)
    return lines


def _default_genes() -> list[str]:
    from cellreasoner.resources import load_gene_list

    return load_gene_list()


def build_tokenizer(genes: Sequence[str] | None = None, vocab_size: int = 32768):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the Qwen2.5 special tokens.

    Parameters
    ----------
    genes
        Gene symbols the vocabulary must cover (default: the ranked CellReasoner list from
        ``cellreasoner.resources.load_gene_list()``).
    vocab_size
        Upper bound of the BPE vocabulary (default 32768); training stops earlier when every
        corpus word is a single token.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    genes = list(genes) if genes is not None else _default_genes()
    tok = Tokenizer(models.BPE())
    # the pre-tokenizer and normalizer of the real Qwen2 tokenizer (transformers rebuilds them
    # from ``model_type`` on load, so the BPE merges must be learned on the same pieces)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(genes), trainer=trainer)
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=EOS,
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_qwen2(
    path: str | os.PathLike,
    vocab_genes: Sequence[str] | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random-weight Qwen2 chat model (model + tokenizer) to ``path``.

    Parameters
    ----------
    path
        Output folder (created; existing files are overwritten).
    vocab_genes
        Gene symbols the tokenizer must cover (default: the ranked CellReasoner gene list).
    hidden_size
        Hidden size (default 64); the MLP is twice as wide.
    num_layers
        Number of decoder layers (default 2).
    seed
        Torch seed for the weights (default 0): the same arguments give the same model.

    Returns
    -------
    Path
        The model folder, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_genes)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(EOS)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        repetition_penalty=1.05,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_transformers(
    model_dir: str | os.PathLike | None,
    workdir: str | os.PathLike,
    *,
    log_level: str = "warning",
    timeout: float = 120.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[tuple[str, Path]]:
    """Run a real ``transformers serve`` (OpenAI-compatible) on 127.0.0.1 for a test.

    Parameters
    ----------
    model_dir
        Model preloaded for every request (``FORCE_MODEL``), or None: requests then name any
        local folder in ``model`` and unknown names fail (as a multi-model server does).
    workdir
        Folder for the server's HF home (an empty, offline hub cache) and ``serve.log``.
    log_level
        Server log level (default ``"warning"``; ``"info"`` logs every request).
    timeout
        Seconds to wait for ``/health`` (default 120).
    extra_args
        More server flags (e.g. ``("--continuous-batching",)``).

    Yields
    ------
    tuple
        ``(base_url ending in /v1, path of the server log)``; the server stops on exit.
    """
    import httpx

    work = Path(workdir)
    (work / "hub").mkdir(parents=True, exist_ok=True)
    log = work / "serve.log"
    port = free_port()
    env = dict(os.environ, HF_HOME=str(work), HF_HUB_CACHE=str(work / "hub"),
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve"]
    if model_dir is not None:
        cmd.append(str(model_dir))
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
            "--log-level", log_level, *extra_args]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve was not ready in {timeout:.0f} s")
            time.sleep(0.5)
        yield f"{base}/v1", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
