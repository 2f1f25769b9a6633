"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp, transformers serve, APIs).

Requests go straight to ``POST {base_url}/chat/completions`` with ``httpx`` (no SDK), a bounded
number at a time, with retries and exponential backoff on rate limits, server errors and
dropped connections.

Reasoning mode. Upstream CellReasoner renders the chat template itself and appends ``"<think> "``
after the assistant header. A chat API renders the template on the server and has no standard
way to prefill the assistant turn, so this backend sends the same two messages (system =
instruction, user = cell sentence) in both modes; the reasoning instruction asks the model to
put its reasoning in ``<think></think>``. When the server splits reasoning out
(``reasoning_content`` or ``reasoning`` in the message, as vLLM/SGLang reasoning parsers,
DeepSeek and Ollama do) it is kept in :attr:`Generation.reasoning`; otherwise any ``<think>``
block stays in :attr:`Generation.text` for the answer parser.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx

from ..errors import BackendError, InputError
from ..prompts import Prompt, SamplingParams
from .base import Backend, Generation, ProgressCallback, ResultCallback

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: HTTP statuses worth retrying (rate limit, server overload/errors).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def request_body(
    model: str,
    prompt: Prompt,
    sampling: SamplingParams,
    n: int | None = None,
    seed: int | None = None,
    send_repetition_penalty: bool = False,
    max_tokens_field: str = "max_tokens",
    extra_body: dict | None = None,
) -> dict:
    """The JSON body of one chat-completions request.

    ``n`` and ``seed`` override ``sampling.n``/``sampling.seed`` (used to top up answers
    from servers that ignore ``n``). ``repetition_penalty`` is sent only when
    ``send_repetition_penalty`` (not part of the OpenAI API; vLLM and SGLang accept it).
    ``sampling.extra`` and then ``extra_body`` are merged in last; a value of ``None`` there
    removes a field (e.g. ``{"top_p": None}`` for APIs that reject it).
    """
    n = sampling.n if n is None else n
    seed = sampling.seed if seed is None else seed
    body: dict = {
        "model": model,
        "messages": prompt.messages(),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        max_tokens_field: sampling.max_new_tokens,
    }
    if n != 1:
        body["n"] = n
    if seed is not None:
        body["seed"] = seed
    if send_repetition_penalty:
        body["repetition_penalty"] = sampling.repetition_penalty
    for extra in (sampling.extra, extra_body or {}):
        for key, value in extra.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
    return body


def parse_choices(data: dict) -> list[Generation]:
    """Generations from a chat-completions response (``reasoning_content`` kept apart)."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise BackendError(f"The server's answer has no 'choices' list: {str(data)[:300]}")
    usage = data.get("usage") or {}
    gens = []
    for choice in sorted(choices, key=lambda c: c.get("index", 0)):
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content") or message.get("reasoning") or None
        meta = {
            "finish_reason": choice.get("finish_reason"),
            "model": data.get("model"),
            # token counts are per request, shared by the request's choices
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "request_choices": len(choices),
        }
        gens.append(Generation(text=message.get("content") or "", reasoning=reasoning,
                               meta=meta))
    return gens


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().replace(".", "", 1).isdigit():  # delta-seconds
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend(Backend):
    """Chat completions from any OpenAI-compatible server.

    Parameters
    ----------
    model
        Model name as the server knows it (required; for ``transformers serve`` a local
        folder or Hub id).
    base_url
        API root that ``/chat/completions`` is appended to (default
        ``"https://api.openai.com/v1"``; e.g. ``"http://127.0.0.1:8000/v1"`` for vLLM).
    api_key_env
        Environment variable holding the API key (default ``"OPENAI_API_KEY"``). It is read at
        request time and never stored; without it no ``Authorization`` header is sent.
    concurrency
        Requests in flight at once (default 8).
    timeout
        Seconds allowed per request (default 120). Answers are not streamed, so a long
        reasoning answer from a slow server needs more.
    max_retries
        Retries per request on HTTP 408/409/429/5xx and lost connections (default 5), with
        exponential backoff from ``backoff`` seconds (default 0.5) up to ``max_backoff``
        (default 30), jittered; a ``Retry-After`` header is honoured. A server that was never
        reached is given at most 2 retries, so a wrong address fails fast.
    send_repetition_penalty
        Also send ``repetition_penalty`` (default False: not an OpenAI API field; vLLM and
        SGLang accept it).
    max_tokens_field
        Name of the length limit field (default ``"max_tokens"``; OpenAI reasoning models
        want ``"max_completion_tokens"``).
    extra_body
        Extra JSON fields for every request (default None); a ``None`` value removes a field.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        send_repetition_penalty: bool = False,
        max_tokens_field: str = "max_tokens",
        extra_body: dict | None = None,
    ) -> None:
        if not model:
            raise InputError("The 'openai' backend needs model=NAME: the model name the server "
                             f"serves (see GET {base_url.rstrip('/')}/models).")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(f"base_url '{base_url}' is not an http(s) URL; pass e.g. "
                             "http://127.0.0.1:8000/v1")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise InputError("concurrency must be >= 1, max_retries >= 0 and timeout > 0 "
                             f"(got {concurrency}, {max_retries}, {timeout}).")
        self.model = str(model)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.send_repetition_penalty = send_repetition_penalty
        self.max_tokens_field = max_tokens_field
        self.extra_body = dict(extra_body or {})
        self._reached = False
        self._in_flight = 0
        #: Counters of the last ``generate``/``agenerate`` call (for benchmarks).
        self.stats: dict = {}

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, "
                f"concurrency={self.concurrency})")

    def describe(self) -> dict:
        """Backend, model, server URL and concurrency (never the API key)."""
        return {"backend": self.name, "model": self.model, "base_url": self.base_url,
                "concurrency": self.concurrency}

    # -- public API ------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Blocking :meth:`agenerate` (also safe inside a running event loop, e.g. Jupyter)."""
        coro = self.agenerate(prompts, sampling, progress=progress, on_result=on_result)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def agenerate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams,
        progress: ProgressCallback | None = None,
        on_result: ResultCallback | None = None,
    ) -> list[list[Generation]]:
        """Answer ``prompts`` with at most ``concurrency`` requests in flight.

        ``on_result(index, generations)`` and ``progress(1)`` are called as each prompt
        finishes (in completion order), so callers can persist results immediately. The first
        prompt that fails for good cancels the rest and raises :class:`BackendError`.
        """
        results: list[list[Generation] | None] = [None] * len(prompts)
        self.stats = {"requests": 0, "retries": 0, "max_in_flight": 0, "prompt_tokens": 0,
                      "completion_tokens": 0, "seconds": 0.0}
        if not prompts:
            return []
        headers = self._headers()
        started = time.perf_counter()
        pending = iter(range(len(prompts)))
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:

            async def worker() -> None:
                for i in pending:  # one shared iterator: each index is taken once
                    gens = await self._answer(client, prompts[i], sampling)
                    results[i] = gens
                    if on_result is not None:
                        on_result(i, gens)
                    if progress is not None:
                        progress(1)

            workers = [asyncio.create_task(worker())
                       for _ in range(min(self.concurrency, len(prompts)))]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                raise
            finally:
                self.stats["seconds"] = time.perf_counter() - started
        return results  # type: ignore[return-value]

    # -- internals -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and urlparse(self.base_url).hostname == "api.openai.com":
            raise BackendError(f"The OpenAI API needs an API key: set the environment variable "
                               f"{self.api_key_env or 'OPENAI_API_KEY'}.")
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _answer(self, client: httpx.AsyncClient, prompt: Prompt,
                      sampling: SamplingParams) -> list[Generation]:
        """All ``sampling.n`` answers of one prompt (topping up if the server ignores ``n``)."""
        gens: list[Generation] = []
        top_up = 0
        while len(gens) < sampling.n:
            seed = None if sampling.seed is None else sampling.seed + top_up
            body = request_body(self.model, prompt, sampling, n=sampling.n - len(gens),
                                seed=seed, send_repetition_penalty=self.send_repetition_penalty,
                                max_tokens_field=self.max_tokens_field,
                                extra_body=self.extra_body)
            new = parse_choices(await self._post(client, body))
            if not new:
                raise BackendError(f"{self.base_url} answered with no choices for model "
                                   f"'{self.model}'.")
            usage_counted = new[0].meta
            self.stats["prompt_tokens"] += usage_counted.get("prompt_tokens") or 0
            self.stats["completion_tokens"] += usage_counted.get("completion_tokens") or 0
            gens.extend(new)
            top_up += 1
        return gens[:sampling.n]

    def _delay(self, attempt: int) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt)
        return delay / 2 + random.uniform(0, delay / 2)

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict:
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)
            self.stats["requests"] += 1
            try:
                response = await client.post(url, json=body)
            except httpx.TransportError as exc:
                # a server never reached is probably not running: fail fast
                limit = self.max_retries if self._reached else min(self.max_retries, 2)
                if attempt >= limit:
                    reason = f"{type(exc).__name__}: {exc or 'no answer'}"
                    if self._reached:
                        raise BackendError(
                            f"The connection to the model server at {url} failed ({reason}) "
                            f"{attempt + 1} time(s) in a row; it may have stopped or be "
                            "overloaded (a lower concurrency may help)."
                        ) from exc
                    raise BackendError(
                        f"Cannot reach the model server at {url} ({reason}) after "
                        f"{attempt + 1} attempt(s). Is it running? Start it (e.g. `vllm serve "
                        "MODEL`, `transformers serve`, `ollama serve`) or pass the right "
                        "base_url."
                    ) from exc
                wait = self._delay(attempt) if self._reached else min(0.2, self.backoff)
            else:
                self._reached = True
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise BackendError(f"{url} answered with invalid JSON: "
                                           f"{response.text[:300]}") from exc
                if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise await self._http_error(response, attempt)
                wait = retry_after_seconds(response.headers.get("retry-after"))
                wait = self._delay(attempt) if wait is None else min(wait, 300.0)
            finally:
                self._in_flight -= 1
            self.stats["retries"] += 1
            logger.info("Retrying %s in %.1f s (attempt %d).", url, wait, attempt + 1)
            await asyncio.sleep(wait)
            attempt += 1

    async def list_models(self) -> list[str]:
        """Model ids from ``GET {base_url}/models``; raises :class:`BackendError` if unavailable.

        Uses a fresh connection: a server may close the pooled one after an error.
        """
        url = f"{self.base_url}/models"
        try:
            async with httpx.AsyncClient(timeout=10.0, headers=self._headers()) as client:
                response = await client.get(url)
            response.raise_for_status()
            return [m["id"] for m in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"Could not list the models of {url} "
                               f"({type(exc).__name__}: {exc}).") from exc

    async def _http_error(self, response: httpx.Response, retries: int) -> BackendError:
        status = response.status_code
        detail = _error_detail(response)
        where = f"{self.base_url}/chat/completions"
        if status in (401, 403):
            return BackendError(
                f"{where} refused the request (HTTP {status}: {detail}). Check the API key in "
                f"${self.api_key_env} and that it may use model '{self.model}'."
            )
        message = f"{where} answered HTTP {status} for model '{self.model}': {detail}"
        if status in RETRY_STATUSES:
            message += f" (after {retries} retries)"
        if status in (404, 400, 422) or status >= 500:
            try:
                models = await self.list_models()
            except BackendError as exc:
                models_note = f" {exc}"
            else:
                if self.model in models:
                    models_note = ""
                elif models:
                    models_note = (f" Model '{self.model}' is not one the server lists; it "
                                   f"serves: {', '.join(models[:20])}.")
                else:
                    models_note = (f" The server lists no models, so model '{self.model}' must "
                                   "be one it can load on demand (a local folder or Hub id).")
            if status == 404:
                message = f"Model '{self.model}' was not found at {where} ({detail})."
            message += models_note
        if status == 422 or (status == 400 and "field" in detail.lower()):
            message += (" If a field is rejected, drop it with extra_body={'FIELD': None} or "
                        "send_repetition_penalty=False.")
        return BackendError(message)


def _error_detail(response: httpx.Response) -> str:
    """The server's error message (OpenAI ``{"error": {"message"}}``, FastAPI ``detail``)."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        for key in ("error", "detail", "message"):
            if data.get(key):
                return str(data[key])[:300]
    return str(data)[:300]
