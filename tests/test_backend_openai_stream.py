"""The openai backend with ``stream=True``: against a real `transformers serve`, and against a
real local server that writes server-sent events byte by byte as chosen (cut-offs, malformed
events, slow tokens, a server that ignores ``stream``)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tiny_model import build_tiny_qwen2, serve_transformers

from cellreasoner.backends.openai import OpenAIBackend
from cellreasoner.errors import BackendError
from cellreasoner.parsing import parse_response
from cellreasoner.prompts import INSTRUCTION_DIRECT, INSTRUCTION_REASONING, Prompt, SamplingParams

THINK = ["CD79A", " and", " MS4A1", " are", " B", "-cell", " genes", "."]
ANSWER = ["B", " cell"]


def _chunk(index: int, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    chunk: dict = {"model": "m", "object": "chat.completion.chunk",
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        chunk = {"model": "m", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _events(n: int, reasoning_tokens: int = 1) -> list[bytes]:
    """A reasoning answer for each of ``n`` choices, their deltas interleaved, then usage."""
    out = [_chunk(i, {"role": "assistant"}) for i in range(n)]
    think = THINK * reasoning_tokens
    for piece in think:
        out += [_chunk(i, {"reasoning_content": piece}) for i in range(n)]
    for piece in ANSWER:
        out += [_chunk(i, {"content": piece}) for i in range(n)]
    out += [_chunk(i, {}, "stop") for i in range(n)]
    out.append(_chunk(0, {}, usage={"prompt_tokens": 11, "completion_tokens": 10 * n}))
    return out + [b"data: [DONE]\n\n"]


class _SSE(BaseHTTPRequestHandler):
    """Streams ``_events`` in the mode the prompt's cell sentence names."""

    protocol_version = "HTTP/1.1"
    asked: Counter = Counter()
    bodies: list[dict] = []

    def log_message(self, *args):
        return

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        mode = body["messages"][-1]["content"]
        type(self).asked[mode] += 1
        type(self).bodies.append(body)
        attempt = type(self).asked[mode]
        n = int(body.get("n", 1))
        if not body.get("stream"):  # an unstreamed request: the whole answer at once
            time.sleep(66 * 0.05 if mode == "slow" else 0)
            mode = "ignores-stream"
        if mode == "ignores-stream":
            payload = json.dumps({"model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"content": "NK cell"}}]})
            self._head("application/json", len(payload))
            self.wfile.write(payload.encode())
            return
        events = _events(n, reasoning_tokens=8 if mode in ("long", "slow") else 1)
        self._head("text/event-stream", None)
        if mode == "malformed":
            events = events[:3] + [b"data: {not json\n\n"]
        for k, event in enumerate(events):
            if (mode == "cut" and attempt == 1 or mode == "always-cut") and k == 5:
                self.wfile.write(b"3\r\nda")  # half a chunk, then the connection is gone
                self.wfile.flush()
                self.close_connection = True
                return
            if mode == "slow":
                time.sleep(0.05)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _head(self, kind: str, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture
def sse_url():
    _SSE.asked = Counter()
    _SSE.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()
    httpd.server_close()


def _prompt(sentence: str, reasoning: bool = True) -> Prompt:
    return Prompt(INSTRUCTION_REASONING if reasoning else INSTRUCTION_DIRECT, sentence, reasoning)


def test_streamed_choices_are_assembled_with_reasoning_usage_and_finish_reason(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True)
    sampling = SamplingParams.for_mode(True, n=2, max_new_tokens=16)
    (gens,) = backend.generate([_prompt("plain")], sampling)
    assert [g.text for g in gens] == ["B cell", "B cell"]
    assert [g.reasoning for g in gens] == ["".join(THINK)] * 2
    assert all(g.meta["finish_reason"] == "stop" and g.meta["streamed"] for g in gens)
    assert gens[0].meta["prompt_tokens"] == 11 and gens[0].meta["completion_tokens"] == 20
    body = _SSE.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["n"] == 2 and _SSE.asked["plain"] == 1  # both answers in one request
    parsed = parse_response(gens[0].text, gens[0].reasoning)
    assert parsed.label == "B cell" and "MS4A1" in parsed.reasoning


def test_progress_moves_within_a_long_answer_and_adds_up_to_one_per_prompt(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True)
    ticks: list[float] = []
    out = backend.generate([_prompt("long"), _prompt("plain")],
                           SamplingParams.for_mode(True, max_new_tokens=70), progress=ticks.append)
    assert [g[0].text for g in out] == ["B cell", "B cell"]
    assert len(out[0][0].reasoning) == 8 * len("".join(THINK))
    parts = [t for t in ticks if 0 < t < 1]
    assert len(parts) >= 4  # 66 deltas of a 70-token budget: the bar moved while it was written
    assert sum(ticks) == pytest.approx(2.0)


def test_a_stream_cut_off_mid_answer_is_asked_again(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True, max_retries=2)
    (gens,) = backend.generate([_prompt("cut")], SamplingParams.for_mode(True, max_new_tokens=16))
    assert gens[0].text == "B cell" and gens[0].reasoning == "".join(THINK)
    assert _SSE.asked["cut"] == 2 and backend.stats["retries"] == 1


def test_a_stream_cut_off_every_time_is_a_clear_error(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True, max_retries=1)
    with pytest.raises(BackendError, match="stopped streaming mid-answer") as info:
        backend.generate([_prompt("always-cut")], SamplingParams.for_mode(True, max_new_tokens=16))
    assert "2 time(s)" in str(info.value) and _SSE.asked["always-cut"] == 2


def test_a_malformed_stream_fails_only_its_prompt(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True, max_retries=1)
    out = backend.generate([_prompt("malformed"), _prompt("plain")],
                           SamplingParams.for_mode(True, max_new_tokens=16))
    assert out[0][0].meta.get("error") and "malformed stream" in out[0][0].meta["error"]
    assert out[1][0].text == "B cell"
    assert backend.stats["failed_prompts"] == 1 and _SSE.asked["malformed"] == 2


def test_a_server_that_ignores_stream_is_read_as_one_reply(sse_url):
    backend = OpenAIBackend(model="m", base_url=sse_url, stream=True)
    (gens,) = backend.generate([_prompt("ignores-stream", False)],
                               SamplingParams.for_mode(False, max_new_tokens=8))
    assert gens[0].text == "NK cell" and gens[0].meta["finish_reason"] == "stop"


def test_timeout_bounds_the_silence_between_tokens_when_streaming(sse_url):
    """66 events 0.05 s apart take ~3.3 s: too long for a 1 s timeout on the whole reply, fine
    for a 1 s bound between tokens."""
    sampling = SamplingParams.for_mode(True, max_new_tokens=16)
    whole = OpenAIBackend(model="m", base_url=sse_url, stream=False, timeout=1, max_retries=0)
    with pytest.raises(BackendError, match="did not answer within 1 s"):
        whole.generate([_prompt("slow")], sampling)  # the unstreamed reply waits for all of it
    streamed = OpenAIBackend(model="m", base_url=sse_url, stream=True, timeout=1, max_retries=0)
    started = time.monotonic()
    (gens,) = streamed.generate([_prompt("slow")], sampling)
    assert gens[0].text == "B cell"
    assert time.monotonic() - started > 2  # the whole answer took longer than the timeout


def test_streamed_answers_from_a_real_server_match_unstreamed_ones(tmp_path_factory,
                                                                  gene_list_path):
    """`transformers serve` streams with its own incremental detokeniser: the same tokens, the
    same finish reason and usage; the text may differ in leading spaces and the last token it
    holds back."""
    from cellreasoner.resources import load_gene_list

    model = build_tiny_qwen2(tmp_path_factory.mktemp("stream") / "qwen2",
                             vocab_genes=load_gene_list(gene_list_path))
    prompts = [_prompt("CD3D, CD3E, IL7R", False), _prompt("MS4A1, CD79A, CD74", False)]
    sampling = SamplingParams.for_mode(False, max_new_tokens=24)
    with serve_transformers(None, tmp_path_factory.mktemp("serve_stream")) as (url, _log):
        plain = OpenAIBackend(model=str(model), base_url=url).generate(prompts, sampling)
        ticks: list[float] = []
        streamed = OpenAIBackend(model=str(model), base_url=url, stream=True, timeout=60)
        got = streamed.generate(prompts, sampling, progress=ticks.append)
    for (a,), (b,) in zip(plain, got, strict=True):
        assert b.meta["streamed"] and b.meta["finish_reason"] == a.meta["finish_reason"]
        assert b.meta["prompt_tokens"] == a.meta["prompt_tokens"]
        assert b.meta["completion_tokens"] == a.meta["completion_tokens"]
        text = b.text.strip()
        assert len(text) >= 0.7 * len(a.text) and a.text.startswith(text)
    assert sum(ticks) == pytest.approx(2.0) and any(0 < t < 1 for t in ticks)


def test_annotate_stream_flag_reaches_the_backend(sse_url, gene_list_path, tmp_path):
    import anndata as ad
    from fault_server import one_gene_cells

    from cellreasoner.cli import main

    genes = [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()][:6]
    src, gene_file, out = tmp_path / "in.h5ad", tmp_path / "genes.txt", tmp_path / "out.h5ad"
    one_gene_cells(genes).write_h5ad(src)
    gene_file.write_text("\n".join(genes) + "\n")
    code = main(["annotate", str(src), "-o", str(out), "--backend", "openai", "--model", "m",
                 "--base-url", sse_url, "--gene-list", str(gene_file), "--stream", "--no-cache",
                 "--no-progress"])
    assert code == 0
    back = ad.read_h5ad(out)
    assert set(back.obs["cellreasoner_label"].astype(str)) == {"B cell"}
    assert all(b["stream"] is True for b in _SSE.bodies) and len(_SSE.bodies) == len(genes)
    assert back.uns["cellreasoner"]["stream"]  # the provenance says the answers were streamed
