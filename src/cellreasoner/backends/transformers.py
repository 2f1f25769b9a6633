"""Local Hugging Face ``transformers`` backend (the upstream CellReasoner inference path)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import BackendError, InputError, require
from ..prompts import Prompt, SamplingParams, render_chat_text
from .base import Backend, Generation, ProgressCallback, ResultCallback

logger = logging.getLogger(__name__)

#: The published CellReasoner model on the Hugging Face Hub.
DEFAULT_MODEL = "guangshuo/CellReasoner-7B"
#: Upstream ``tokenizer(..., truncation=True, max_length=8192)``.
MAX_INPUT_TOKENS = 8192

_FEATURE = "The 'transformers' backend"


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1)


def resolve_device(device: str, torch) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"mps"`` or ``"cpu"``."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def chat_text(tokenizer, prompt: Prompt, model: str) -> str:
    """:func:`render_chat_text`, with a clear error for a model without a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"Model '{model}' has no chat template (tokenizer.chat_template is empty), so its "
            "tokenizer cannot lay out CellReasoner's system/user messages. Use a chat "
            "(instruct) model such as CellReasoner or Qwen2.5-Instruct."
        )
    return render_chat_text(tokenizer, prompt)


def reject_greedy_n(sampling: SamplingParams) -> None:
    """Raise :class:`InputError` for ``n > 1`` with greedy decoding (identical answers)."""
    if sampling.n > 1 and sampling.temperature <= 0:
        raise InputError(
            f"n={sampling.n} with temperature=0 would return {sampling.n} identical greedy "
            "answers; use a temperature > 0 to draw several answers per cell."
        )


class _DecodeProgress:
    """A ``transformers`` streamer that moves the progress bar once per decoding step, so a
    batch of long (reasoning) answers shows progress while it is written.

    ``generate`` hands it the prompt first, then each step's new tokens; every step moves the
    bar by ``share / max_new_tokens`` of the :data:`~cellreasoner.progress.STREAM_SHARE`
    shown while streaming (``share``: the batch's prompts), in strides of 16 steps, through
    :class:`~cellreasoner.progress.StreamTicks`. :meth:`finish` shows the rest once the batch
    is done (answers that stop early never use their whole budget).
    """

    def __init__(self, share: float, max_new_tokens: int, progress: ProgressCallback) -> None:
        from ..progress import STREAM_SHARE, StreamTicks

        self._per_step = STREAM_SHARE * share / max(1, max_new_tokens)
        self._ticks = StreamTicks(progress, float(share))
        self._steps = -1  # the first put() is the prompt

    def put(self, value) -> None:  # noqa: D102 - transformers' streamer API
        self._steps += 1
        if self._steps and self._steps % 16 == 0:
            self._ticks.tick(16 * self._per_step)

    def end(self) -> None:  # noqa: D102 - transformers' streamer API
        return

    def finish(self) -> None:
        """Show the part of the batch's share not shown yet."""
        self._ticks.finish()


def generate_kwargs(sampling: SamplingParams, pad_token_id: int | None) -> dict:
    """``model.generate`` keyword arguments for ``sampling`` (upstream conventions).

    Sampling (``do_sample=True``) with ``temperature``/``top_p``; greedy decoding when
    ``temperature == 0``. ``sampling.extra`` is forwarded as further ``generate`` arguments.
    """
    reject_greedy_n(sampling)
    kwargs: dict = {
        "max_new_tokens": sampling.max_new_tokens,
        "repetition_penalty": float(sampling.repetition_penalty),
        "num_return_sequences": sampling.n,
        "pad_token_id": pad_token_id,
    }
    if sampling.temperature > 0:
        kwargs.update(do_sample=True, temperature=float(sampling.temperature),
                      top_p=float(sampling.top_p))
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    kwargs.update(sampling.extra)
    return kwargs


class TransformersBackend(Backend):
    """Run a causal LM with ``transformers`` exactly as upstream CellReasoner does.

    Prompts are rendered with the model's chat template (:func:`render_chat_text`), tokenized
    with left padding, truncated to ``max_input_tokens`` and answered in batches sorted by
    length; the decoded new tokens (special tokens skipped) are returned in input order.

    Parameters
    ----------
    model
        Hub id or local folder (default ``"guangshuo/CellReasoner-7B"``). On an offline
        machine pass a local folder.
    device
        ``"auto"`` (default: CUDA if visible, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ...
    dtype
        Torch dtype name or ``"auto"`` (default: the checkpoint's dtype).
    batch_size
        Prompts per ``generate`` call (default 8); halved automatically on CUDA out-of-memory.
    gguf_file
        File name of GGUF weights inside ``model`` (default None); transformers dequantizes it.
    trust_remote_code
        Passed to ``from_pretrained`` (default False).
    max_input_tokens
        Truncation length of the prompt (default 8192, as upstream).
    model_kwargs
        Extra ``from_pretrained`` arguments for the model (default None), e.g.
        ``{"device_map": "auto"}`` to spread a large model over several GPUs.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        max_input_tokens: int = MAX_INPUT_TOKENS,
        model_kwargs: dict | None = None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1 (got {batch_size}).")
        torch = require("torch", "transformers", _FEATURE)
        tfm = require("transformers", "transformers", _FEATURE)
        self._torch = torch
        self._set_seed = tfm.set_seed
        self.model = str(model)
        self.batch_size = batch_size
        self.gguf_file = gguf_file
        self.max_input_tokens = max_input_tokens
        self.device = resolve_device(device, torch)

        local = Path(self.model).expanduser()
        if local.exists():
            if not local.is_dir():
                raise InputError(f"Model path {local} is a file; pass the folder that holds it "
                                 "(and gguf_file=NAME for GGUF weights).")
            source = str(local)
        elif _looks_like_path(self.model):
            raise InputError(f"Model folder {local} does not exist. Pass an existing folder "
                             "with config.json and the tokenizer, or a Hugging Face Hub id.")
        else:
            source = self.model

        common = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            common["gguf_file"] = gguf_file
        load_kwargs = dict(common, **(model_kwargs or {}))
        load_kwargs["dtype"] = "auto" if dtype == "auto" else getattr(torch, dtype, None)
        if not isinstance(load_kwargs["dtype"], str | torch.dtype):
            raise InputError(f"dtype '{dtype}' is not a torch dtype; use 'auto', 'bfloat16', "
                             "'float16' or 'float32'.")
        try:
            self.tokenizer = tfm.AutoTokenizer.from_pretrained(source, **common)
            self._model = tfm.AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
        except (OSError, ValueError) as exc:
            if not local.exists():
                raise BackendError(
                    f"Could not load model '{self.model}' from the Hugging Face Hub ({exc}). "
                    "If this machine is offline, download it elsewhere (e.g. `hf download "
                    f"{self.model} --local-dir DIR`) and pass the local folder as model=DIR."
                ) from exc
            raise BackendError(f"Could not load the model in {source}: {exc}") from exc
        if "device_map" not in load_kwargs:  # accelerate placed the weights already
            self._model.to(self.device)
        self._model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.stats: dict = {}

    def describe(self) -> dict:
        """Backend, model, device, dtype and GGUF file (for provenance)."""
        return {
            "backend": self.name,
            "model": self.model,
            "gguf_file": self.gguf_file,
            "device": self.device,
            "dtype": str(self._model.dtype).removeprefix("torch."),
        }

    def prompt_text(self, prompt: Prompt) -> str:
        """The exact model input for ``prompt`` (chat template, upstream ``<think>`` rules)."""
        return chat_text(self.tokenizer, prompt, self.model)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer ``prompts`` in length-sorted batches; ``sampling.n`` answers each, in order.

        ``progress`` moves while each batch is decoded (every 16 steps), and by the rest
        of the batch's length after ``on_result(index, generations)`` is called for its
        prompts, so callers can persist results as they come.
        When ``sampling.seed`` is set the global torch/numpy/random seeds are set once per
        call, so the same prompts, batch size and device give the same answers.
        """
        if not prompts:
            return []
        kwargs = generate_kwargs(sampling, self.tokenizer.eos_token_id)
        if sampling.seed is not None:
            self._set_seed(sampling.seed)
        # upstream: tokenizer(..., truncation=True, max_length=8192), i.e. keep the first tokens
        encoded = self.tokenizer([self.prompt_text(p) for p in prompts])["input_ids"]
        truncated = [len(ids) > self.max_input_tokens for ids in encoded]
        if any(truncated):
            encoded = [ids[:self.max_input_tokens] for ids in encoded]
            logger.warning("%d prompt(s) were cut to their first %d tokens (as upstream does); "
                           "their answers are unreliable.", sum(truncated),
                           self.max_input_tokens)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[list[Generation] | None] = [None] * len(prompts)
        self.stats = {"batches": 0, "oom_splits": 0, "prompt_tokens": 0, "completion_tokens": 0}
        start = 0
        while start < len(order):
            batch = order[start:start + self.batch_size]
            steps = None if progress is None else _DecodeProgress(
                len(batch), sampling.max_new_tokens, progress)
            answers = self._run_batch([encoded[i] for i in batch],
                                      kwargs if steps is None else {**kwargs, "streamer": steps})
            for i, gens in zip(batch, answers, strict=True):
                for g in gens:
                    g.meta["truncated"] = truncated[i]
                results[i] = gens
                if on_result is not None:
                    on_result(i, gens)
            start += len(batch)
            if steps is not None:
                steps.finish()
        return results  # type: ignore[return-value]

    def _run_batch(self, batch_ids: list[list[int]], kwargs: dict) -> list[list[Generation]]:
        """Generate for one batch; split it in two on CUDA out-of-memory."""
        torch = self._torch
        try:
            return self._generate_batch(batch_ids, kwargs)
        except torch.cuda.OutOfMemoryError:
            if len(batch_ids) == 1:
                raise BackendError(
                    "Out of GPU memory for a single prompt; lower max_new_tokens, use a smaller "
                    "dtype (dtype='bfloat16') or a GPU with more memory."
                ) from None
            torch.cuda.empty_cache()
            half = len(batch_ids) // 2
            self.batch_size = max(1, half)
            self.stats["oom_splits"] += 1
            logger.warning("CUDA out of memory: batch_size lowered to %d.", self.batch_size)
            return self._run_batch(batch_ids[:half], kwargs) + self._run_batch(
                batch_ids[half:], kwargs
            )

    def _generate_batch(self, batch_ids: list[list[int]], kwargs: dict) -> list[list[Generation]]:
        torch = self._torch
        inputs = self.tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
        inputs = {k: v.to(self._model.device) for k, v in inputs.items()}
        width = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self._model.generate(**inputs, **kwargs)
        new = out[:, width:].tolist()
        n = kwargs["num_return_sequences"]
        self.stats["batches"] += 1
        answers: list[list[Generation]] = []
        for row, prompt_ids in enumerate(batch_ids):
            gens = []
            for tokens in new[row * n:(row + 1) * n]:
                stop = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
                used = tokens if stop is None else tokens[:stop + 1]
                text = self.tokenizer.decode(used, skip_special_tokens=True)
                meta = {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": len(used),
                    "finish_reason": "length" if stop is None else "stop",
                }
                self.stats["completion_tokens"] += len(used)
                gens.append(Generation(text=text, meta=meta))
            self.stats["prompt_tokens"] += len(prompt_ids)
            answers.append(gens)
        return answers

    def close(self) -> None:
        """Drop the model and free GPU memory."""
        model = getattr(self, "_model", None)
        if model is not None:
            del self._model
            if self.device.startswith("cuda"):
                self._torch.cuda.empty_cache()
