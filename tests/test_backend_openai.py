"""The OpenAI-compatible backend against a real `transformers serve` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from tiny_model import build_tiny_qwen2, free_port, serve_transformers

from cellreasoner.backends import get_backend
from cellreasoner.backends.openai import (
    OpenAIBackend,
    parse_choices,
    request_body,
)
from cellreasoner.errors import BackendError, InputError
from cellreasoner.prompts import (
    INSTRUCTION_DIRECT,
    INSTRUCTION_REASONING,
    Prompt,
    SamplingParams,
)

GENES = ["CD74", "HLA-DRA", "MS4A1", "CD79A", "CD3D", "CD3E", "IL7R", "LTB", "LYZ", "S100A9",
         "CD14", "FCN1", "NKG7", "GNLY", "PPBP", "PF4"]
SHORT = SamplingParams.for_mode(False, max_new_tokens=4)


def _prompts(k: int, reasoning: bool = False) -> list[Prompt]:
    instruction = INSTRUCTION_REASONING if reasoning else INSTRUCTION_DIRECT
    return [Prompt(instruction, ", ".join(GENES[i % 8:i % 8 + 5 + i % 3]), reasoning)
            for i in range(k)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gene_list_path) -> Path:
    from cellreasoner.resources import load_gene_list

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny_openai") / "qwen2",
                            vocab_genes=load_gene_list(gene_list_path))


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model_dir) -> str:
    """`transformers serve` on a free local port; models load on demand by path."""
    with serve_transformers(None, tmp_path_factory.mktemp("serve")) as (base_url, _log):
        yield base_url


@pytest.fixture
def backend(server, tiny_model_dir) -> OpenAIBackend:
    return get_backend("openai", model=str(tiny_model_dir), base_url=server, concurrency=8,
                       timeout=60)


def test_answers_come_back_rendered_with_the_chat_template(backend, tiny_model_dir):
    from transformers import AutoTokenizer

    prompts = _prompts(3)
    done: list[int] = []
    out = backend.generate(prompts, SHORT, progress=done.append)
    assert len(out) == 3 and all(len(g) == 1 for g in out)
    assert sum(done) == 3
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for p, (g,) in zip(prompts, out, strict=True):
        assert isinstance(g.text, str) and g.reasoning is None
        assert 1 <= g.meta["completion_tokens"] <= 4
        # the server rendered exactly our system + user messages with the model's template
        text = tok.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
        assert g.meta["prompt_tokens"] == len(tok(text)["input_ids"])
    assert backend.stats["prompt_tokens"] == sum(g[0].meta["prompt_tokens"] for g in out)


def test_n_answers_are_topped_up_when_the_server_ignores_n(backend):
    sampling = SamplingParams.for_mode(True, max_new_tokens=4, n=3)
    out = backend.generate(_prompts(2, reasoning=True), sampling)
    assert [len(g) for g in out] == [3, 3]
    # transformers serve ignores "n": one request per answer, each with its own seed
    assert backend.stats["requests"] == 6


def test_concurrent_requests_overlap_and_report_each_result(server, tiny_model_dir):
    results: dict[int, int] = {}
    prompts = _prompts(8)
    parallel = OpenAIBackend(model=str(tiny_model_dir), base_url=server, concurrency=8)
    out = parallel.generate(prompts, SHORT,
                            on_result=lambda i, gens: results.__setitem__(i, len(gens)))
    assert len(out) == 8 and all(len(g) == 1 for g in out)
    assert results == {i: 1 for i in range(8)}
    assert parallel.stats["max_in_flight"] > 1
    serial = OpenAIBackend(model=str(tiny_model_dir), base_url=server, concurrency=1)
    serial.generate(prompts[:3], SHORT)
    assert serial.stats["max_in_flight"] == 1


def test_agenerate_and_generate_inside_a_running_loop(backend):
    async def main():
        direct = await backend.agenerate(_prompts(2), SHORT)
        blocking = backend.generate(_prompts(2), SHORT)  # as from a Jupyter cell
        return direct, blocking

    direct, blocking = asyncio.run(main())
    assert len(direct) == len(blocking) == 2


def test_server_down_fails_fast_with_a_clear_message():
    url = f"http://127.0.0.1:{free_port()}/v1"
    down = OpenAIBackend(model="m", base_url=url, max_retries=5)
    started = time.monotonic()
    with pytest.raises(BackendError, match="Cannot reach the model server") as info:
        down.generate(_prompts(4), SHORT)
    assert url in str(info.value) and "running" in str(info.value)
    assert time.monotonic() - started < 10
    assert down.stats["requests"] <= 4 * 3  # never more than 3 attempts per request


def test_wrong_model_name_is_reported_with_the_servers_models(server):
    wrong = OpenAIBackend(model="no-such-model-xyz", base_url=server, max_retries=1)
    with pytest.raises(BackendError, match="no-such-model-xyz") as info:
        wrong.generate(_prompts(1), SHORT)
    message = str(info.value)
    assert "HTTP 500" in message
    # the note follows what the server itself lists (transformers serve lists the models it
    # has loaded from 5.x on, and none before)
    listed = [m["id"] for m in httpx.get(f"{server}/models", timeout=10).json().get("data", [])]
    if listed:
        assert "is not one the server lists" in message
        assert all(m in message for m in listed[:20])
    else:
        assert "lists no models" in message
    assert wrong.stats["retries"] == 1  # a 5xx is retried, boundedly


def test_rejected_field_names_the_way_out(server, tiny_model_dir):
    strict = OpenAIBackend(model=str(tiny_model_dir), base_url=server,
                           send_repetition_penalty=True)
    with pytest.raises(BackendError, match="HTTP 422") as info:
        strict.generate(_prompts(1), SHORT)
    assert "repetition_penalty" in str(info.value)
    assert strict.stats["retries"] == 0


def test_api_key_comes_from_the_environment_and_is_never_shown(server, tiny_model_dir,
                                                               monkeypatch):
    monkeypatch.setenv("CELLREASONER_TEST_KEY", "sk-secret-123")
    keyed = OpenAIBackend(model=str(tiny_model_dir), base_url=server,
                          api_key_env="CELLREASONER_TEST_KEY")
    assert "sk-secret-123" not in repr(keyed) + str(keyed.describe()) + str(vars(keyed))
    assert len(keyed.generate(_prompts(1), SHORT)) == 1
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    hosted = OpenAIBackend(model="gpt-4o")
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        hosted.generate(_prompts(1), SHORT)


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="model"):
        OpenAIBackend(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(InputError, match="base_url"):
        OpenAIBackend(model="m", base_url="127.0.0.1:8000")


def test_request_body_follows_sampling_and_options():
    prompt = Prompt(INSTRUCTION_REASONING, "CD3D, CD3E", True)
    body = request_body("m", prompt, SamplingParams.for_mode(True, n=2, max_new_tokens=50))
    assert body == {"model": "m", "messages": prompt.messages(), "temperature": 0.6,
                    "top_p": 0.4, "max_tokens": 50, "n": 2, "seed": 1234}
    body = request_body("m", prompt, SamplingParams(seed=None), send_repetition_penalty=True,
                        max_tokens_field="max_completion_tokens",
                        extra_body={"top_p": None, "top_k": 20})
    assert "top_p" not in body and "seed" not in body and "n" not in body
    assert body["repetition_penalty"] == 1.1 and body["top_k"] == 20
    assert body["max_completion_tokens"] == 4096 and "max_tokens" not in body


def test_parse_choices_keeps_reasoning_and_usage():
    data = {"model": "r1", "usage": {"prompt_tokens": 10, "completion_tokens": 7},
            "choices": [
                {"index": 1, "finish_reason": "length", "message": {"content": None}},
                {"index": 0, "finish_reason": "stop",
                 "message": {"content": "T cell", "reasoning_content": "CD3D is a T marker"}}]}
    first, second = parse_choices(data)
    assert (first.text, first.reasoning) == ("T cell", "CD3D is a T marker")
    assert (second.text, second.reasoning) == ("", None)
    assert first.meta["completion_tokens"] == 7 and first.meta["finish_reason"] == "stop"
    with pytest.raises(BackendError, match="choices"):
        parse_choices({"error": "boom"})


class _Overloaded(BaseHTTPRequestHandler):
    """A real HTTP server that rate-limits the first request of each body, then answers."""

    seen: list[float] = []

    def do_POST(self):  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(time.monotonic())
        if len(self.seen) == 1:
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps({"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "NK"}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        return


def test_rate_limit_is_retried_after_the_servers_retry_after():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Overloaded)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        limited = OpenAIBackend(model="m", base_url=f"http://127.0.0.1:{httpd.server_port}/v1")
        out = limited.generate(_prompts(1), SHORT)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert out[0][0].text == "NK"
    assert limited.stats["retries"] == 1 and limited.stats["requests"] == 2
    first, second = _Overloaded.seen
    assert second - first >= 0.95  # waited for Retry-After, not the SDK's <= 0.5 s backoff


class _RejectsOne(BaseHTTPRequestHandler):
    """A real HTTP server that answers every cell except one whose sentence is 'BAD'."""

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.05)
        if body["messages"][1]["content"] == "BAD":
            status, payload = 400, {"error": {"message": "prompt rejected by policy"}}
        else:
            status, payload = 200, {"choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"content": "B cell"}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


def test_a_failing_prompt_stops_the_run_after_reporting_finished_ones():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _RejectsOne)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    prompts = [Prompt(INSTRUCTION_DIRECT, s) for s in ["CD79A", "MS4A1", "BAD", "CD19", "PAX5"]]
    finished: list[int] = []
    try:
        serial = OpenAIBackend(model="m", base_url=f"http://127.0.0.1:{httpd.server_port}/v1",
                               concurrency=1)
        with pytest.raises(BackendError, match="HTTP 400.*prompt rejected by policy"):
            serial.generate(prompts, SHORT, on_result=lambda i, gens: finished.append(i))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert finished == [0, 1]  # saved before the failure; nothing after it was asked
    assert serial.stats["requests"] == 3 and serial.stats["retries"] == 0
