"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp, transformers serve, APIs).

Requests go to ``POST {base_url}/chat/completions`` through the official ``openai`` SDK
(``AsyncOpenAI``): a bounded number at a time, with its bounded retries and jittered exponential
backoff on rate limits, server errors, dropped connections and timeouts (a ``Retry-After`` of up
to two minutes is honoured), and its typed errors. The reply body is read as plain JSON here, not
through the SDK's response models, so that fields the OpenAI schema lacks
(``reasoning_content``/``reasoning``) are kept and a malformed reply is recognised as such.

Faults, and what each becomes:

- connection refused before the server ever answered: at most 2 retries, then
  :class:`BackendError` "Cannot reach the model server ... Is it running?";
- no answer within ``timeout`` seconds (``max_retries + 1`` attempts): :class:`BackendError`
  saying it timed out after N s and N attempts (the server was reached);
- HTTP 429/5xx after ``max_retries`` retries, or any other HTTP error: :class:`BackendError`
  with the server's own message (and the models it serves, when the model may be wrong);
- a malformed 200 reply (not JSON, not an object, no or empty ``choices``, ``message`` or
  ``content`` of the wrong type): asked again up to ``max_retries`` times, then the *prompt*
  is recorded as failed (:func:`~cellreasoner.backends.base.failed_generations`) and the run
  carries on; the engine labels its cells "Unknown" and never caches it.

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
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from .._secrets import redact_url
from ..errors import BackendError, InputError
from ..progress import StreamTicks
from ..prompts import Prompt, SamplingParams
from ._openai_wire import (
    MalformedReply,
    StreamAssembler,
    error_detail,
    parse_choices,
    request_body,
    sse_data,
)
from .base import Backend, Generation, ProgressCallback, ResultCallback, failed_generations

__all__ = ["DEFAULT_BASE_URL", "MalformedReply", "OpenAIBackend", "parse_choices",
           "request_body"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: HTTP statuses the SDK retries (rate limit, conflicts, server overload/errors).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Retries of a request to a server that has not answered once yet (a wrong address fails fast).
UNREACHED_RETRIES = 2


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
        Seconds allowed per attempt (default 120); with ``stream=True``, seconds allowed
        between two pieces of the answer instead. Without streaming a long reasoning answer
        from a slow server needs more; a hung server fails after ``max_retries + 1``
        attempts, about ``(max_retries + 1) * timeout`` seconds.
    max_retries
        Retries per request (default 3) on HTTP 408/409/429/5xx, lost connections, timeouts
        and malformed replies, with the SDK's jittered exponential backoff (0.5 s doubling up
        to 8 s; a ``Retry-After`` of up to 120 s is honoured). A server that was never reached
        is given at most 2 retries, so a wrong address fails fast.
    send_repetition_penalty
        Also send ``repetition_penalty`` (default False: not an OpenAI API field; vLLM and
        SGLang accept it).
    max_tokens_field
        Name of the length limit field (default ``"max_tokens"``; OpenAI reasoning models
        want ``"max_completion_tokens"``).
    extra_body
        Extra JSON fields for every request (default None); a ``None`` value removes a field.
    stream
        Ask for the answer as server-sent events (default False): the progress bar moves
        while a long (reasoning) answer is written, and ``timeout`` bounds the silence between
        tokens rather than the whole answer. The answers are the same; token counts come from
        the closing ``usage`` chunk (``stream_options.include_usage``, sent unless
        ``extra_body={"stream_options": None}``). A server that ignores ``stream`` and answers
        with one JSON body is read as usual; a stream cut off mid-answer is asked again like
        a dropped connection.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 3,
        send_repetition_penalty: bool = False,
        max_tokens_field: str = "max_tokens",
        extra_body: dict | None = None,
        stream: bool = False,
    ) -> None:
        if not model:
            raise InputError("The 'openai' backend needs model=NAME: the model name the server "
                             f"serves (see GET {base_url.rstrip('/')}/models).")
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InputError(f"base_url '{base_url}' is not an http(s) URL; pass e.g. "
                             "http://127.0.0.1:8000/v1")
        if concurrency < 1 or max_retries < 0 or not timeout > 0:
            raise InputError("concurrency must be >= 1, max_retries (--max-retries) >= 0 and "
                             f"timeout (--timeout) > 0 (got {concurrency}, {max_retries}, "
                             f"{timeout}).")
        import openai  # a core dependency, imported only when this backend is used

        self._sdk = openai
        self.model = str(model)
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.send_repetition_penalty = send_repetition_penalty
        self.max_tokens_field = max_tokens_field
        self.extra_body = dict(extra_body or {})
        self.stream = bool(stream)
        self._reached = False
        self._send_key = False  # whether the current client sends an Authorization header
        self._in_flight = 0
        #: Counters of the last ``generate``/``agenerate`` call (for benchmarks).
        self.stats: dict = {}

    def __repr__(self) -> str:
        return (f"OpenAIBackend(model={self.model!r}, base_url={redact_url(self.base_url)!r}, "
                f"concurrency={self.concurrency})")

    def describe(self) -> dict:
        """Backend, model, server URL and concurrency (never the API key)."""
        return {"backend": self.name, "model": self.model, "base_url": self.base_url,
                "concurrency": self.concurrency, "stream": self.stream}

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
        finishes (in completion order), so callers can persist results immediately. A prompt
        whose replies stay malformed gets failed generations (``meta["error"]``; see
        :func:`~cellreasoner.backends.base.failed_generations`) and the others go on; any other
        lasting failure cancels the rest and raises :class:`BackendError`.
        """
        results: list[list[Generation] | None] = [None] * len(prompts)
        self.stats = {"requests": 0, "retries": 0, "max_in_flight": 0, "prompt_tokens": 0,
                      "completion_tokens": 0, "failed_prompts": 0, "seconds": 0.0}
        if not prompts:
            return []
        started = time.perf_counter()
        pending = iter(range(len(prompts)))
        async with self._client() as client:

            async def worker() -> None:
                for i in pending:  # one shared iterator: each index is taken once
                    ticks = StreamTicks(progress)  # the prompt's share, while streaming
                    gens = await self._answer(client, prompts[i], sampling, ticks.tick)
                    results[i] = gens
                    if on_result is not None:
                        on_result(i, gens)
                    ticks.finish()

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

    async def list_models(self) -> list[str]:
        """Model ids from ``GET {base_url}/models``; raises :class:`BackendError` if unavailable.

        Uses a fresh connection: a server may close the pooled one after an error.
        """
        url = f"{self.base_url}/models"
        shown = redact_url(url)  # what messages show: no credentials
        try:
            async with self._client(timeout=10.0) as client:
                response = await client.get("/models", cast_to=self._httpx.Response,
                                            options=self._options(0))
            return [m["id"] for m in response.json().get("data", [])]
        except (self._sdk.OpenAIError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendError(f"Could not list the models of {shown} "
                               f"({type(exc).__name__}: {exc}).") from exc

    # -- internals -------------------------------------------------------------------------

    @property
    def _httpx(self):
        """The HTTP library the installed SDK is built on (``httpx2``, or ``httpx`` before)."""
        import sys

        base = next(c for c in type.mro(self._sdk.DefaultAsyncHttpxClient)
                    if c.__name__ == "AsyncClient")
        return sys.modules[base.__module__.split(".")[0]]

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key and urlparse(self.base_url).hostname == "api.openai.com":
            raise BackendError(f"The OpenAI API needs an API key: set the environment variable "
                               f"{self.api_key_env or 'OPENAI_API_KEY'}.")
        return key or ""

    def _client(self, timeout: float | None = None):
        """A fresh ``AsyncOpenAI`` (retries are set per request, see :meth:`_options`)."""
        sdk, httpx = self._sdk, self._httpx
        timeout = self.timeout if timeout is None else timeout
        key_now = self._api_key()  # fails early for api.openai.com without a key

        async def api_key() -> str:  # read at request time, never stored on the backend
            return self._api_key()

        async def on_request(request) -> None:
            if not request.url.path.endswith("/chat/completions"):
                return  # the model list asked for an error message is not a chat request
            self.stats["requests"] = self.stats.get("requests", 0) + 1
            retry = request.headers.get("x-stainless-retry-count", "0")
            if retry not in ("", "0"):
                self.stats["retries"] = self.stats.get("retries", 0) + 1

        async def on_response(response) -> None:
            self._reached = True

        http = sdk.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=self.concurrency,
                                max_keepalive_connections=self.concurrency),
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            event_hooks={"request": [on_request], "response": [on_response]})
        self._send_key = bool(key_now)
        return sdk.AsyncOpenAI(api_key=api_key, base_url=self.base_url, http_client=http,
                               max_retries=self.max_retries, timeout=timeout)

    def _options(self, retries: int | None = None) -> dict:
        """Per-request SDK options: the retry budget, and no ``Authorization`` without a key."""
        if retries is None:
            retries = self.max_retries if self._reached else min(self.max_retries,
                                                                 UNREACHED_RETRIES)
        options: dict = {"max_retries": retries}
        if not self._send_key:
            options["headers"] = {"Authorization": self._sdk.Omit()}
        return options

    async def _answer(self, client, prompt: Prompt, sampling: SamplingParams,
                      tick: Callable[[float], None] | None = None) -> list[Generation]:
        """All ``sampling.n`` answers of one prompt (topping up if the server ignores ``n``),
        or failed generations when the replies stay malformed. ``tick(share)`` moves the
        progress bar by parts of this prompt while streamed tokens arrive."""
        per_delta = 0.9 / max(1, sampling.n * (sampling.max_new_tokens or 1))
        gens: list[Generation] = []
        top_up = 0
        while len(gens) < sampling.n:
            seed = None if sampling.seed is None else sampling.seed + top_up
            body = request_body(self.model, prompt, sampling, n=sampling.n - len(gens),
                                seed=seed, send_repetition_penalty=self.send_repetition_penalty,
                                max_tokens_field=self.max_tokens_field,
                                extra_body=self.extra_body)
            try:
                if self.stream:
                    new = await self._ask_streamed(client, body, per_delta, tick)
                else:
                    new = await self._ask(client, body)
            except MalformedReply as exc:
                self.stats["failed_prompts"] += 1
                logger.warning("%s; this prompt is recorded as failed (its cells 'Unknown') "
                               "and the run goes on.", exc)
                return failed_generations(str(exc), sampling.n)
            usage_counted = new[0].meta
            self.stats["prompt_tokens"] += usage_counted.get("prompt_tokens") or 0
            self.stats["completion_tokens"] += usage_counted.get("completion_tokens") or 0
            gens.extend(new)
            top_up += 1
        return gens[:sampling.n]

    async def _ask(self, client, body: dict) -> list[Generation]:
        """One request's generations; malformed replies are asked again ``max_retries`` times.

        Raises
        ------
        MalformedReply
            Every attempt got a malformed reply.
        BackendError
            Any other lasting failure (see the module docstring).
        """
        shown = redact_url(f"{self.base_url}/chat/completions")  # messages show no secrets
        for attempt in range(self.max_retries + 1):
            response = await self._post(client, body)
            try:
                return parse_choices(response.json())
            except ValueError as exc:  # not JSON (json.JSONDecodeError is a ValueError)
                problem = MalformedReply(f"the reply is not JSON ({exc}): "
                                         f"{response.text[:200]!r}")
            except MalformedReply as exc:
                problem = exc
            if attempt < self.max_retries:
                await self._backoff(attempt, f"Malformed reply from {shown} ({problem})")
        raise MalformedReply(f"{shown} gave a malformed reply {self.max_retries + 1} time(s) in a "
                             f"row for model '{self.model}' ({problem})")

    async def _backoff(self, attempt: int, what: str) -> None:
        """Count a retry and wait before asking again (jittered exponential backoff, 0.5 s
        doubling up to 8 s); ``what`` (already free of secrets) is logged."""
        self.stats["retries"] += 1
        wait = min(8.0, 0.5 * 2 ** attempt) * (1 - 0.25 * random.random())
        logger.info("%s; asking again in %.1f s.", what, wait)
        await asyncio.sleep(wait)

    async def _ask_streamed(self, client, body: dict, per_delta: float,
                            tick: Callable[[float], None] | None) -> list[Generation]:
        """One streamed request's generations (see ``stream``); a malformed or cut-off
        stream is asked again ``max_retries`` times.

        Raises
        ------
        MalformedReply
            Every attempt got a malformed stream.
        BackendError
            Every attempt's stream was cut off, or any other lasting failure.
        """
        shown = redact_url(f"{self.base_url}/chat/completions")
        body = {**body, "stream": True}
        if "stream_options" not in self.extra_body:  # extra_body may set or drop it
            body["stream_options"] = {"include_usage": True}
        dropped = False
        for attempt in range(self.max_retries + 1):
            response = await self._post(client, body, stream=True)
            try:
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    await response.aread()  # a server that ignored "stream": one JSON body
                    return parse_choices(response.json())
                assembler, shown_deltas = StreamAssembler(), 0
                async for data in sse_data(response.aiter_lines()):
                    if not assembler.add(data):
                        break
                    if tick is not None and assembler.deltas - shown_deltas >= 16:
                        tick((assembler.deltas - shown_deltas) * per_delta)
                        shown_deltas = assembler.deltas
                return assembler.generations()
            except ValueError as exc:  # not JSON (json.JSONDecodeError is a ValueError)
                problem, dropped = MalformedReply(f"the reply is not JSON ({exc})"), False
            except MalformedReply as exc:
                problem, dropped = exc, False
            except self._httpx.TransportError as exc:  # cut off mid-answer, or silent too long
                problem, dropped = exc, True
            finally:
                await response.aclose()
            if attempt < self.max_retries:
                await self._backoff(attempt, f"Streamed reply from {shown} failed "
                                             f"({type(problem).__name__}: {problem})")
        if dropped:
            raise BackendError(
                f"The model server at {shown} stopped streaming mid-answer "
                f"({type(problem).__name__}) {self.max_retries + 1} time(s) in a row for model "
                f"'{self.model}'. It may have crashed or be overloaded (lower --concurrency), or "
                f"have been silent for more than --timeout {self.timeout:g} s.")
        raise MalformedReply(f"{shown} gave a malformed stream {self.max_retries + 1} time(s) "
                             f"in a row for model '{self.model}' ({problem})")

    async def _post(self, client, body: dict, stream: bool = False):
        """The raw 200 response of one chat request (the SDK retries transient faults);
        with ``stream`` its body is not read yet (the caller reads and closes it)."""
        sdk = self._sdk
        url = f"{self.base_url}/chat/completions"
        shown = redact_url(url)  # what messages show: no credentials
        retries = self._options()["max_retries"]
        self._in_flight += 1
        self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)
        started = time.monotonic()
        try:
            return await client.post("/chat/completions", body=body,
                                     cast_to=self._httpx.Response,
                                     options=self._options(retries), stream=stream)
        except sdk.APITimeoutError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "timeout"
            what = ("could not connect" if "Connect" in cause else "did not answer")
            raise BackendError(
                f"The model server at {shown} {what} within {self.timeout:g} s ({cause}), "
                f"{retries + 1} attempt(s), {time.monotonic() - started:.0f} s in all. "
                + ("It was reached but seems hung or overloaded: lower --concurrency, or "
                   "raise --timeout for long reasoning answers."
                   if self._reached or what == "did not answer" else
                   "Check the address (--base-url) and that the server is running.")
            ) from exc
        except sdk.APIConnectionError as exc:
            cause = exc.__cause__
            reason = type(cause).__name__ if cause is not None else "connection error"
            if self._reached or not isinstance(cause, self._httpx.ConnectError):
                raise BackendError(
                    f"The connection to the model server at {shown} was dropped before an "
                    f"answer ({reason}), {retries + 1} attempt(s) in a row; the server may "
                    "have stopped, crashed on the request or be overloaded (a lower "
                    "--concurrency may help)."
                ) from exc
            raise BackendError(
                f"Cannot reach the model server at {shown} ({reason}) after {retries + 1} "
                "attempt(s). Is it running? Start it (e.g. `vllm serve MODEL`, `transformers "
                "serve`, `ollama serve`) or pass the right base_url."
            ) from exc
        except sdk.APIStatusError as exc:
            raise await self._http_error(exc.response, retries) from exc
        finally:
            self._in_flight -= 1

    async def _http_error(self, response, retries: int) -> BackendError:
        status = response.status_code
        detail = error_detail(response)
        where = redact_url(f"{self.base_url}/chat/completions")  # messages show no secrets
        if status in (401, 403):
            return BackendError(
                f"{where} refused the request (HTTP {status}: {detail}). Check the API key in "
                f"${self.api_key_env} and that it may use model '{self.model}'."
            )
        message = f"{where} answered HTTP {status} for model '{self.model}': {detail}"
        if status in RETRY_STATUSES:
            message += f" (after {retries} retries)"
        if status in (404, 400, 422) or status >= 500:
            note = await self._models_note()  # asks the server's model list once
            message = (f"Model '{self.model}' was not found at {where} ({detail})."
                       if status == 404 else message) + note
        if status == 422 or (status == 400 and "field" in detail.lower()):
            message += (" If a field is rejected, drop it with extra_body={'FIELD': None} or "
                        "send_repetition_penalty=False.")
        return BackendError(message)

    async def _models_note(self) -> str:
        """What the server's model list says about ``self.model`` (``""`` when it is listed)."""
        try:
            models = await self.list_models()
        except BackendError as exc:
            return f" {exc}"
        if self.model in models:
            return ""
        if models:
            return (f" Model '{self.model}' is not one the server lists; it serves: "
                    f"{', '.join(models[:20])}.")
        return (f" The server lists no models, so model '{self.model}' must be one it can load "
                "on demand (a local folder or Hub id).")
