"""Quantized GGUF models on CPU or GPU through llama-cpp-python (optional extra ``gguf``).

The prompt is rendered exactly as upstream CellReasoner does (the model's own chat template,
``<think>`` removed, ``"<think> "`` appended in reasoning mode) and completed as plain text,
so a GGUF conversion of CellReasoner sees the same input as the original model.
Without llama-cpp-python, ``TransformersBackend(model=folder, gguf_file=name)`` runs the same
file (dequantized) through transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .._system import available_cores
from ..errors import InputError, require
from ..prompts import Prompt, SamplingParams, render_chat_text
from .base import Backend, Generation, ProgressCallback, ResultCallback
from .transformers import reject_greedy_n

_FEATURE = "The 'gguf' backend (llama.cpp)"
#: Default context: upstream truncates prompts to 8192 tokens and allows 4096 new ones.
DEFAULT_N_CTX = 8192 + 4096


class ChatTemplate:
    """A Jinja chat template (as stored in GGUF metadata) with ``apply_chat_template``.

    Renders like Hugging Face tokenizers do (sandboxed Jinja, ``trim_blocks``,
    ``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``), so
    :func:`cellreasoner.prompts.render_chat_text` works on it unchanged.

    Parameters
    ----------
    template
        The Jinja source (GGUF key ``tokenizer.chat_template``).
    bos_token, eos_token
        Token strings the template may use (default ``""``: llama.cpp adds BOS itself).
    """

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise InputError(f"The model's chat template refused the messages: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(
            x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = template
        self._template = env.from_string(template)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """Render ``messages`` to text (``tokenize`` must be False)."""
        if tokenize:
            raise ValueError("ChatTemplate renders text only; call it with tokenize=False.")
        return self._template.render(messages=messages,
                                     add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token, eos_token=self.eos_token)


def completion_kwargs(sampling: SamplingParams, seed: int | None) -> dict:
    """``Llama.create_completion`` arguments for one answer (llama.cpp is greedy at 0)."""
    reject_greedy_n(sampling)
    kwargs = {
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "repeat_penalty": sampling.repetition_penalty,
    }
    if seed is not None:
        kwargs["seed"] = seed
    kwargs.update(sampling.extra)
    return kwargs


def check_gguf_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a readable GGUF file, else a clear :class:`InputError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"GGUF model file not found: {p}. Pass the path of a .gguf file.")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise InputError(f"{p} is not a GGUF file (it does not start with 'GGUF'). Convert the "
                         "model with llama.cpp's convert_hf_to_gguf.py or pick the .gguf file.")
    return p


class GGUFBackend(Backend):
    """Run a GGUF model with llama-cpp-python.

    Parameters
    ----------
    model
        Path of the ``.gguf`` file (``model_path`` is accepted as an alias).
    n_ctx
        Context length in tokens (default 12288: 8192 prompt + 4096 answer, as upstream).
    n_threads
        CPU threads (default None: every core this process may use; llama.cpp's own default
        is half of them).
    n_gpu_layers
        Layers offloaded to a GPU (default 0; -1 for all).
    chat_template
        Jinja chat template overriding the one stored in the file (default None).
    llama_kwargs
        Further ``llama_cpp.Llama`` arguments (default None).
    """

    name = "gguf"

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        chat_template: str | None = None,
        llama_kwargs: dict | None = None,
        model_path: str | os.PathLike | None = None,
    ) -> None:
        if (model is None) == (model_path is None):
            raise InputError("The gguf backend needs the .gguf file: pass model=PATH "
                             "(CLI: --backend gguf --model PATH).")
        path = check_gguf_file(model if model is not None else model_path)
        llama_cpp = require("llama_cpp", "gguf", _FEATURE)
        self.model = str(path)
        if n_threads is None:
            n_threads = available_cores()
        elif int(n_threads) < 1:
            raise InputError(f"n_threads (--threads) must be at least 1, not {n_threads}.")
        self.n_threads = int(n_threads)
        self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                    n_gpu_layers=n_gpu_layers, verbose=False,
                                    **(llama_kwargs or {}))
        template = chat_template or self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InputError(f"{path} stores no chat template (GGUF key "
                             "tokenizer.chat_template); pass chat_template='...'.")
        self.template = ChatTemplate(template, eos_token=self._token_text("eos"))

    def _token_text(self, which: str) -> str:
        token_id = getattr(self._llm, f"token_{which}")()
        return self._llm.detokenize([token_id], special=True).decode("utf-8", "replace")

    def prompt_text(self, prompt: Prompt) -> str:
        """The exact model input for ``prompt`` (upstream rendering on the file's template)."""
        return render_chat_text(self.template, prompt)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Complete each prompt ``sampling.n`` times (seeds ``seed``, ``seed + 1``, ...).

        Tokens are streamed: ``progress`` moves by fractions of a prompt while an answer is
        written, and reaches 1 per prompt after ``on_result(index, generations)``.
        """
        from ..progress import STREAM_SHARE, StreamTicks

        results = []
        for index, prompt in enumerate(prompts):
            text = self.prompt_text(prompt)
            ticks = StreamTicks(progress)  # the prompt's share of the bar, while streaming
            gens = []
            for j in range(sampling.n):
                seed = None if sampling.seed is None else sampling.seed + j
                gens.append(self._complete(text, completion_kwargs(sampling, seed),
                                           STREAM_SHARE / sampling.n, ticks.tick))
            results.append(gens)
            if on_result is not None:
                on_result(index, gens)
            ticks.finish()
        return results

    def _complete(self, text: str, kwargs: dict, share: float, tick) -> Generation:
        """One streamed completion: ``tick`` moves the bar as tokens arrive (up to ``share``
        of the prompt), so a long reasoning answer shows progress."""
        pieces: list[str] = []
        finish = None
        per_token = share / max(1, int(kwargs.get("max_tokens") or 1))
        pending = 0
        for chunk in self._llm.create_completion(prompt=text, stream=True, **kwargs):
            choice = chunk["choices"][0]
            finish = choice.get("finish_reason") or finish
            if choice.get("finish_reason") and not choice.get("text"):
                continue  # the closing chunk carries the reason, not a token
            pieces.append(choice.get("text") or "")
            pending += 1
            if pending == 16:
                tick(16 * per_token)
                pending = 0
        # tokenised as create_completion does, so the count matches its usage figure
        prompt_tokens = len(self._llm.tokenize(text.encode("utf-8"), special=True))
        return Generation(text="".join(pieces), meta={
            "finish_reason": finish, "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces)})

    def describe(self) -> dict:
        """Provenance: the file and the CPU threads used."""
        return {**super().describe(), "n_threads": self.n_threads}

    def close(self) -> None:
        """Free the llama.cpp model."""
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            del self._llm
