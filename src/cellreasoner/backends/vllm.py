"""Offline vLLM inference (optional extra ``vllm``; needs a supported GPU).

Prompts are rendered with the model's tokenizer exactly as upstream CellReasoner does and sent
to ``vllm.LLM.generate`` as text, with prefix caching on: every prompt shares the long
instruction, so its KV cache is computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError, require
from ..prompts import Prompt, SamplingParams
from .base import Backend, Generation, ProgressCallback, ResultCallback
from .transformers import DEFAULT_MODEL, chat_text, reject_greedy_n

_FEATURE = "The 'vllm' backend"


def prompt_texts(tokenizer, prompts: Sequence[Prompt], model: str = "") -> list[str]:
    """Model inputs for ``prompts`` (chat template, upstream ``<think>`` rules)."""
    return [chat_text(tokenizer, p, model) for p in prompts]


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
        Fraction of GPU memory vLLM may take (default 0.9).
    max_model_len
        Context length (default 12288: 8192 prompt + 4096 answer, as upstream).
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
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
        chunk_size: int = 512,
        llm_kwargs: dict | None = None,
    ) -> None:
        if chunk_size < 1:
            raise InputError(f"chunk_size must be >= 1 (got {chunk_size}).")
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
        ``progress(chunk length)`` once.
        """
        params = self._vllm.SamplingParams(**sampling_kwargs(sampling))
        texts = prompt_texts(self.tokenizer, prompts, self.model)
        results: list[list[Generation]] = []
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start:start + self.chunk_size]
            for request in self.llm.generate(chunk, params, use_tqdm=False):
                gens = [
                    Generation(text=c.text, meta={
                        "finish_reason": c.finish_reason,
                        "prompt_tokens": len(request.prompt_token_ids or []),
                        "completion_tokens": len(c.token_ids),
                    })
                    for c in request.outputs
                ]
                if on_result is not None:
                    on_result(len(results), gens)
                results.append(gens)
            if progress is not None:
                progress(len(chunk))
        return results
