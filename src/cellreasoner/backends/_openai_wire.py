"""The chat-completions wire format of :mod:`cellreasoner.backends.openai`: the request body
it sends, and the strict reading of a reply (``reasoning_content`` kept; anything malformed is a
:class:`MalformedReply`, which the backend asks again and then records as a failed prompt).
"""

from __future__ import annotations

import json

from ..errors import BackendError
from ..prompts import Prompt, SamplingParams
from .base import Generation


class MalformedReply(BackendError):
    """A 200 reply whose body is not a chat-completions object (retried, then the prompt fails)."""


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


def _text_field(message: dict, name: str) -> str | None:
    value = message.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedReply(f"the reply's message '{name}' is a {type(value).__name__}, "
                             "not text")
    return value


def _index(choice: dict) -> int:
    """A choice's ``index`` (0 when absent or not an integer)."""
    index = choice.get("index", 0)
    return index if isinstance(index, int) else 0


def _reasoning(message: dict) -> str | None:
    """The reasoning a server split out of a message or delta (``reasoning_content``, as
    vLLM/SGLang/DeepSeek send it, or ``reasoning``, as Ollama does)."""
    return _text_field(message, "reasoning_content") or _text_field(message, "reasoning")


def _meta(finish_reason, model, usage: dict, n_choices: int) -> dict:
    """A generation's metadata; token counts are per request, shared by its choices."""
    return {"finish_reason": finish_reason, "model": model,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "request_choices": n_choices}


def parse_choices(data: object) -> list[Generation]:
    """Generations from a chat-completions reply (``reasoning_content`` kept apart).

    Raises
    ------
    MalformedReply
        ``data`` is not an object with a non-empty ``choices`` list of objects whose
        ``message`` is an object with text (or null) ``content``.
    """
    if not isinstance(data, dict):
        raise MalformedReply(f"the reply is a JSON {type(data).__name__}, not an object: "
                             f"{str(data)[:200]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReply(f"the reply has no (or an empty) 'choices' list: {str(data)[:200]}")
    if not all(isinstance(c, dict) for c in choices):
        raise MalformedReply(f"the reply's 'choices' are not objects: {str(choices)[:200]}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    gens = []
    for choice in sorted(choices, key=_index):
        message = choice.get("message")
        if not isinstance(message, dict):
            raise MalformedReply(f"the reply's 'message' is a {type(message).__name__}, not an "
                                 f"object: {str(message)[:200]}")
        text = _text_field(message, "content") or ""
        gens.append(Generation(text=text, reasoning=_reasoning(message) or None,
                               meta=_meta(choice.get("finish_reason"), data.get("model"),
                                          usage, len(choices))))
    return gens


def error_detail(response) -> str:
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


class StreamAssembler:
    """The generations of one streamed chat-completions reply, built from its SSE events.

    Feed each server-sent-event ``data`` payload to :meth:`add` (``[DONE]`` returns False);
    :meth:`generations` then gives the same :class:`Generation` objects :func:`parse_choices`
    gives for the unstreamed reply: ``content`` and ``reasoning_content``/``reasoning``
    deltas joined per choice ``index``, the last ``finish_reason``, and the ``usage`` of the
    closing chunk when the server sends one (``stream_options.include_usage``).
    """

    def __init__(self) -> None:
        self._text: dict[int, list[str]] = {}
        self._reasoning: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self.model: str | None = None
        self.usage: dict = {}
        #: Content and reasoning deltas received (about one per token).
        self.deltas = 0

    def add(self, data: str) -> bool:
        """Take one event's ``data``; False once the stream says ``[DONE]``.

        Raises
        ------
        MalformedReply
            The event is not JSON, or not a chunk object with a ``choices`` list of objects
            whose ``delta`` is an object with text (or null) fields.
        """
        if data.strip() == "[DONE]":
            return False
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise MalformedReply(f"a streamed event is not JSON ({exc}): {data[:200]!r}") from None
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise MalformedReply(f"a streamed event is not a chunk object: {data[:200]}")
        if isinstance(chunk.get("error"), dict):
            raise MalformedReply(f"the server reported an error mid-answer: "
                                 f"{str(chunk['error'].get('message', chunk['error']))[:200]}")
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if delta is None and isinstance(choice, dict) and "finish_reason" in choice:
                delta = {}
            if not isinstance(delta, dict):
                raise MalformedReply(f"a streamed choice has no 'delta' object: "
                                     f"{str(choice)[:200]}")
            index = _index(choice)
            self._text.setdefault(index, [])
            piece = _text_field(delta, "content")
            thought = _reasoning(delta)
            if piece:
                self._text[index].append(piece)
            if thought:
                self._reasoning.setdefault(index, []).append(thought)
            self.deltas += bool(piece) + bool(thought)
            if choice.get("finish_reason"):
                self._finish[index] = choice["finish_reason"]
        return True

    def generations(self) -> list[Generation]:
        """One :class:`Generation` per choice, by ``index``.

        Raises
        ------
        MalformedReply
            The stream carried no choice at all.
        """
        if not self._text:
            raise MalformedReply("the streamed reply ended without any choice")
        gens = []
        for index in sorted(self._text):
            reasoning = "".join(self._reasoning.get(index, [])) or None
            meta = _meta(self._finish.get(index), self.model, self.usage, len(self._text))
            gens.append(Generation(text="".join(self._text[index]), reasoning=reasoning,
                                   meta={**meta, "streamed": True}))
        return gens


def sse_data(lines):
    """The ``data`` payload of each server-sent event in an async iterable of text lines
    (multi-line ``data`` fields joined with newlines; comments and other fields skipped)."""

    async def events():
        buffer: list[str] = []
        async for line in lines:
            line = line.rstrip("\r\n")
            if not line:
                if buffer:
                    yield "\n".join(buffer)
                    buffer = []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                buffer.append(value[1:] if value.startswith(" ") else value)
        if buffer:
            yield "\n".join(buffer)

    return events()
