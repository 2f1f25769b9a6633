"""A real fault-injecting OpenAI-compatible server on 127.0.0.1 (tests and bench/faults.py).

``FaultServer`` answers ``POST /v1/chat/completions`` from a thread of the calling process;
clients may be other processes. It counts every request per prompt (the user message), so
"each prompt was asked once" is checked on the server side. A fault applies to the first
``times`` requests of each prompt (``times=-1``: to all of them), optionally only to the prompt
whose cell sentence is ``only``; then the prompt is answered normally.

Faults: ``ok``, ``429`` (with ``Retry-After``), ``500``, ``503``, ``reset`` (the connection
is closed with a TCP reset, no reply), ``hang`` (no reply for ``hang_s`` seconds), ``bad_json``,
``empty_choices``, ``content_not_string``, ``message_string``, ``json_array``,
``huge_random`` (2 MB of random printable text as the answer), ``huge_line`` (a 200,000
character one-line answer).
"""

from __future__ import annotations

import functools
import json
import random
import socket
import string
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "503", "reset", "hang", "bad_json", "empty_choices",
          "content_not_string", "message_string", "json_array", "huge_random", "huge_line")
#: The label every good answer carries (a real cell type, as a model would answer).
LABEL = "B cell"


def answer_for(sentence: str) -> str:
    """The good answer to a prompt: a <think> block citing its first gene, then the label."""
    first = sentence.split(",")[0].strip() or "CD79A"
    return f"<think>{first} is expressed.</think>{LABEL}"


@functools.lru_cache(maxsize=2)  # made once: 2 MB takes a moment
def _random_text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(string.printable, k=n))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultServer._HTTP

    def log_message(self, *args) -> None:  # noqa: D102 - quiet server
        return

    def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.close_connection = True
            self.server.owner.clients_gone += 1

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._send(200, json.dumps({"data": [{"id": "m"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sentence = str(body["messages"][-1]["content"])
        owner: FaultServer = self.server.owner
        fault = owner.fault_for(sentence)
        owner.record(sentence, dict(self.headers), fault)
        with owner._lock:
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            if owner.delay_s:
                time.sleep(owner.delay_s)
            self._reply(fault, sentence, body)
        finally:
            with owner._lock:
                owner.in_flight -= 1

    def _reply(self, fault: str, sentence: str, body: dict) -> None:
        owner: FaultServer = self.server.owner
        if fault in ("429", "500", "503"):
            headers = {"Retry-After": str(owner.retry_after_s)} if fault == "429" else {}
            self._send(int(fault), b'{"error": {"message": "injected fault"}}', headers)
            return
        if fault == "reset":
            # SO_LINGER 0: close() sends a TCP reset instead of a clean FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "hang":
            owner.stopping.wait(owner.hang_s)
            self.close_connection = True
            return
        raw = {"bad_json": b'{"choices": [{"message": {"content": "B cell"',
               "empty_choices": b'{"choices": []}',
               "content_not_string": b'{"choices": [{"index": 0, "message": {"content": '
                                     b'{"text": "B cell"}}}]}',
               "message_string": b'{"choices": [{"index": 0, "message": "B cell"}]}',
               "json_array": b'[{"message": {"content": "B cell"}}]'}.get(fault)
        if raw is not None:
            self._send(200, raw)
            return
        text = {"huge_random": lambda: _random_text(2_000_000),
                "huge_line": lambda: "T" * 200_000}.get(fault, lambda: answer_for(sentence))()
        n = int(body.get("n", 1))
        payload = {"model": body.get("model"), "usage": {"prompt_tokens": 5,
                                                         "completion_tokens": 3},
                   "choices": [{"index": i, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}
                               for i in range(n)]}
        self._send(200, json.dumps(payload).encode())


class FaultServer:
    """The server; use as a context manager (``with FaultServer("bad_json", times=1) as s``).

    Attributes
    ----------
    asked
        Requests per prompt sentence (every attempt, faulty or not).
    headers
        Request headers seen (to check that no secret leaks, and retry counts).
    """

    class _HTTP(ThreadingHTTPServer):
        daemon_threads = True
        owner: FaultServer

        def handle_error(self, request, client_address) -> None:
            """A client that went away (killed, timed out) is counted, not printed."""
            if isinstance(sys.exc_info()[1], ConnectionError):
                self.owner.clients_gone += 1
                return
            super().handle_error(request, client_address)

    def __init__(self, fault: str = "ok", *, times: int = 1, only: str | None = None,
                 delay_s: float = 0.0, hang_s: float = 30.0, retry_after_s: float = 1.0):
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        self.fault, self.times, self.only = fault, times, only
        self.delay_s, self.hang_s, self.retry_after_s = delay_s, hang_s, retry_after_s
        self.asked: Counter = Counter()
        self.headers: list[dict] = []
        self.faults_sent = 0
        self.clients_gone = 0  # replies the client no longer waited for
        self.in_flight = self.max_in_flight = 0  # requests being answered now / at most
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = self._HTTP(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The ``base_url`` to pass to the client."""
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    def fault_for(self, sentence: str) -> str:
        """The fault this request of ``sentence`` gets (before it is counted)."""
        with self._lock:
            attempt = self.asked[sentence]
        if self.only is not None and sentence != self.only:
            return "ok"
        if self.times < 0 or attempt < self.times:
            return self.fault
        return "ok"

    def record(self, sentence: str, headers: dict, fault: str) -> None:
        with self._lock:
            self.asked[sentence] += 1
            self.headers.append(headers)
            self.faults_sent += fault != "ok"

    def asked_twice(self) -> int:
        """Prompts asked more than once."""
        with self._lock:
            return sum(1 for v in self.asked.values() if v > 1)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def one_gene_cells(genes: list[str]):
    """A log-normalised AnnData whose cell ``i`` expresses only ``genes[i]`` (so its cell
    sentence, and prompt, is that gene alone)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    k = len(genes)
    X = sp.csr_matrix((np.full(k, 1.5, np.float32), (np.arange(k), np.arange(k))),
                      shape=(k, k))
    return ad.AnnData(X=X, obs=pd.DataFrame(index=[f"cell{i}" for i in range(k)]),
                      var=pd.DataFrame(index=list(genes)))
