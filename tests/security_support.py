"""Helpers of the reliability/security tests: the CLI in a subprocess, a chat server.

``running_chat_server`` is a real OpenAI-compatible chat-completions server on 127.0.0.1 that
records what arrived (paths, Authorization headers), answers at most ``Chat.limit`` requests
and can be told to fail with an error body that echoes the request's credentials.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Seconds any CLI subprocess may take (a hang is a failure, not a stuck suite).
CLI_TIMEOUT = 240


def env_for(cache: Path, **extra: str) -> dict:
    """This worktree's code, ``cache`` as the cache, no ambient API key, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["CELLREASONER_CACHE"] = str(cache)
    env.pop("OPENAI_API_KEY", None)
    env.update(extra)
    return env


def cli(args: list[str], env: dict, umask: int | None = None) -> subprocess.CompletedProcess:
    """``python -m cellreasoner.cli ARGS`` in a fresh process (optionally under ``umask``)."""
    return subprocess.run([sys.executable, "-m", "cellreasoner.cli", *args], env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def python(code: str, env: dict) -> subprocess.CompletedProcess:
    """``python -c CODE`` in a fresh process."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)


def mode(path: Path) -> int:
    """Permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- chat server

class Chat(BaseHTTPRequestHandler):
    """OpenAI chat completions: every POST gets one reasoning answer; GET /models lists one.

    Class attributes record what arrived (paths, Authorization headers); ``limit`` bounds the
    requests answered (the rest get HTTP 503), ``status`` forces an error answer whose body
    echoes the request line and the Authorization header back (a leaky server).
    """

    seen: list[tuple[str, str]] = []
    limit = 200
    status = 200
    answer = "<think>CD3E and CD3D are expressed, so these are T cells.</think>T cell"

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server API
        self._send(200, {"data": [{"id": "m", "object": "model"}]})

    def do_POST(self):  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        auth = self.headers.get("Authorization") or ""
        Chat.seen.append((self.path, auth))
        if len(Chat.seen) > Chat.limit:
            self._send(503, {"error": {"message": "request limit of the test server"}})
            return
        if Chat.status != 200:
            self._send(Chat.status, {"error": {
                "message": f"bad credentials in {self.path} with {auth}"}})
            return
        text = Chat.answer
        n = int(body.get("n") or 1)
        self._send(200, {"model": body.get("model"), "choices": [
            {"index": i, "finish_reason": "stop", "message": {"content": text}}
            for i in range(n)]})

    def log_message(self, *args):
        return


@contextmanager
def running_chat_server() -> Iterator[int]:
    """A real chat-completions server on 127.0.0.1 (fresh records); yields its port."""
    Chat.seen, Chat.limit, Chat.status = [], 200, 200
    Chat.answer = "<think>CD3E and CD3D are expressed, so these are T cells.</think>T cell"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def annotate_openai(port: int, src: Path, out: Path, env: dict, *extra: str,
                     umask: int | None = None) -> subprocess.CompletedProcess:
    return cli(["annotate", str(src), "-o", str(out), "--backend", "openai", "--model", "m",
                 "--base-url", f"http://127.0.0.1:{port}/v1", "--no-progress", *extra], env,
                umask=umask)
