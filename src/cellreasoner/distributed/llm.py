"""``ray.data.llm`` with vLLM engine replicas: the reference path for LLMs at scale.

:func:`vllm_processor_kwargs` builds a ``vLLMEngineProcessorConfig``'s arguments from our
vLLM backend's settings (:class:`~cellreasoner.backends.vllm.VLLMBackend`): the model, its
context length, prefix caching (every prompt starts with the same instruction, and the ``n``
samples of a prompt share its KV cache), replicas and GPUs per replica. The chat template is
ours: Ray's chat-template stage is off and each row's ``prompt`` is rendered by
:class:`PromptRenderer` with the model's own tokenizer exactly as the ``vllm`` and
``transformers`` backends render it (upstream ``<think>`` rules), then Ray tokenizes it.
Sampling is :func:`cellreasoner.backends.vllm.sampling_kwargs`, per row.

Building the config runs anywhere (tests build it on CPU); running the processor needs vLLM
and GPUs (``pip install 'ray[llm]'``)::

    from cellreasoner.distributed.llm import build_vllm_processor
    processor = build_vllm_processor("guangshuo/CellReasoner-7B", sampling, replicas=8)
    answers = processor(ray.data.from_items(prompt_rows(prompts))).take_all()
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backends.transformers import DEFAULT_MODEL
from ..backends.vllm import sampling_kwargs
from ..errors import require
from ..prompts import Prompt, SamplingParams

#: Context length of the published models' runs: 8192 prompt + 4096 answer tokens.
MAX_MODEL_LEN = 8192 + 4096


def vllm_processor_kwargs(model: str = DEFAULT_MODEL, *, replicas: int = 1,
                          tensor_parallel_size: int = 1, batch_size: int = 64,
                          max_model_len: int = MAX_MODEL_LEN,
                          enable_prefix_caching: bool = True,
                          accelerator_type: str | None = None,
                          engine_kwargs: dict | None = None) -> dict:
    """Arguments of ``ray.data.llm.vLLMEngineProcessorConfig`` for our vLLM settings.

    Parameters
    ----------
    model
        Hub id or folder (default ``"guangshuo/CellReasoner-7B"``).
    replicas
        vLLM engine replicas (Ray actors), ``tensor_parallel_size`` GPUs each.
    batch_size
        Rows per batch sent to an engine.
    max_model_len, enable_prefix_caching
        As :class:`~cellreasoner.backends.vllm.VLLMBackend` (12288 tokens; on).
    accelerator_type
        Ray accelerator type to place replicas on (e.g. ``"H100"``); default any GPU.
    engine_kwargs
        Further ``vllm.LLM`` arguments.

    Returns
    -------
    dict
        Keyword arguments for ``vLLMEngineProcessorConfig``.
    """
    engine = {"max_model_len": int(max_model_len),
              "enable_prefix_caching": bool(enable_prefix_caching),
              "tensor_parallel_size": int(tensor_parallel_size),
              **(engine_kwargs or {})}
    kwargs = {"model_source": str(model), "engine_kwargs": engine,
              "concurrency": int(replicas), "batch_size": int(batch_size),
              # our own chat rendering (PromptRenderer): Ray only tokenizes and detokenizes
              "chat_template_stage": False, "tokenize_stage": True, "detokenize_stage": True}
    if accelerator_type:
        kwargs["accelerator_type"] = accelerator_type
    return kwargs


def vllm_processor_config(model: str = DEFAULT_MODEL, **options):
    """``ray.data.llm.vLLMEngineProcessorConfig(**vllm_processor_kwargs(model, **options))``."""
    llm = require("ray.data.llm", "ray", "The ray.data.llm vLLM processor")
    return llm.vLLMEngineProcessorConfig(**vllm_processor_kwargs(model, **options))


def prompt_rows(prompts: Sequence[Prompt]) -> list[dict]:
    """Rows of a Ray dataset, one per (unique) prompt: its key and its parts."""
    return [{"key": p.key(), "instruction": p.instruction, "sentence": p.sentence,
             "reasoning": bool(p.reasoning)} for p in prompts]


class PromptRenderer:
    """Ray Data preprocess step: a row -> its model input and sampling (loads the model's
    tokenizer once per worker).

    Parameters
    ----------
    model
        What the tokenizer is loaded from (the model's hub id or folder).
    sampling
        The run's sampling settings.
    """

    def __init__(self, model: str, sampling: SamplingParams) -> None:
        transformers = require("transformers", "transformers", "Rendering CellReasoner prompts")
        self.model = model
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model)
        self.sampling = sampling_kwargs(sampling)

    def __call__(self, row: dict) -> dict:
        from ..backends.transformers import chat_text

        prompt = Prompt(row["instruction"], row["sentence"], bool(row["reasoning"]))
        return {"key": row["key"], "prompt": chat_text(self.tokenizer, prompt, self.model),
                "sampling_params": dict(self.sampling)}


def build_vllm_processor(model: str, sampling: SamplingParams, **options):
    """A ``ray.data.llm`` processor answering :func:`prompt_rows` (needs vLLM and GPUs).

    ``options`` go to :func:`vllm_processor_kwargs`. Each output row holds ``key`` and
    ``generated_text``.
    """
    llm = require("ray.data.llm", "ray", "The ray.data.llm vLLM processor")
    config = vllm_processor_config(model, **options)
    renderer = PromptRenderer(model, sampling)
    return llm.build_processor(
        config, preprocess=renderer,
        postprocess=lambda row: {"key": row["key"], "generated_text": row["generated_text"]})


__all__ = ["PromptRenderer", "build_vllm_processor", "prompt_rows", "vllm_processor_config",
           "vllm_processor_kwargs"]
