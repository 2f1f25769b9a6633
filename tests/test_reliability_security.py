"""Reliability and security: nothing run from the cache, nothing leaked, nothing world-readable.

Everything goes through real files, real subprocesses of the ``cellreasoner`` CLI and a real
OpenAI-compatible HTTP server on 127.0.0.1 (bounded in requests and time):

- the Cell Ontology index cache is never unpickled: a planted pickle (old and new file names)
  runs nothing, and a corrupt / foreign-version index is rebuilt, not trusted;
- credentials in ``--base-url`` (userinfo, ``api-key``/``token``/``key``/``secret``/``password``/
  ``sig`` parameters) and the API key reach none of: the .h5ad, the CSV, the HTML report,
  stdout, stderr, the cache files;
- the cache folder is 0700 and its files 0600 whatever the umask; existing ones are tightened;
- text cells starting with ``= + - @`` tab or CR are prefixed with ``'`` in spreadsheet CSVs,
  numbers stay numbers, and evaluate reads the escaped CSV back unchanged.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Seconds any CLI subprocess may take (a hang is a failure, not a stuck suite).
CLI_TIMEOUT = 240


def _env(cache: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["CELLREASONER_CACHE"] = str(cache)
    env.pop("OPENAI_API_KEY", None)
    env.update(extra)
    return env


def _cli(args: list[str], env: dict, umask: int | None = None) -> subprocess.CompletedProcess:
    """``python -m cellreasoner.cli ARGS`` in a fresh process (optionally under ``umask``)."""
    return subprocess.run([sys.executable, "-m", "cellreasoner.cli", *args], env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, _pbmc68k_cached) -> Path:
    """12 real PBMCs (log-normalised, 765 genes) with their labels."""
    path = tmp_path_factory.mktemp("sec_in") / "cells.h5ad"
    _pbmc68k_cached.raw.to_adata()[:12].copy().write_h5ad(path)
    return path


# --------------------------------------------------------------------------- chat server

class _Chat(BaseHTTPRequestHandler):
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
        type(self).seen.append((self.path, auth))
        if len(type(self).seen) > type(self).limit:
            self._send(503, {"error": {"message": "request limit of the test server"}})
            return
        if type(self).status != 200:
            self._send(type(self).status, {"error": {
                "message": f"bad credentials in {self.path} with {auth}"}})
            return
        text = type(self).answer
        n = int(body.get("n") or 1)
        self._send(200, {"model": body.get("model"), "choices": [
            {"index": i, "finish_reason": "stop", "message": {"content": text}}
            for i in range(n)]})

    def log_message(self, *args):
        return


@pytest.fixture
def chat_server():
    """A real chat-completions server on 127.0.0.1 (fresh records per test)."""
    _Chat.seen, _Chat.limit, _Chat.status = [], 200, 200
    _Chat.answer = "<think>CD3E and CD3D are expressed, so these are T cells.</think>T cell"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- ontology cache

class _Plant:
    """Unpickling this creates ``marker``: proof that a cache file ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cl_version() -> str:
    from cellreasoner.ontology.index import _cl_version

    return _cl_version()


def test_a_planted_pickle_in_the_cache_runs_nothing(tmp_path, chat_server, small_h5ad):
    """Old code unpickled ``cl_index_<v>_v4.pkl`` during annotate, running the planted code."""
    cache = tmp_path / "cache"
    cache.mkdir()
    version = _cl_version()
    markers = []
    for name in (f"cl_index_{version}_v4.pkl", f"cl_index_{version}_v5.pkl",
                 f"cl_index_{version}_v5.json"):
        marker = tmp_path / f"ran_{name}"
        (cache / name).write_bytes(pickle.dumps(_Plant(marker)))
        markers.append(marker)
    out = tmp_path / "out.h5ad"
    r = _cli(["annotate", str(small_h5ad), "-o", str(out), "--backend", "openai", "--model", "m",
              "--base-url", f"http://127.0.0.1:{chat_server}/v1", "--no-progress"],
             _env(cache))
    assert r.returncode == 0, r.stderr
    assert [m.name for m in markers if m.exists()] == []
    assert _Chat.seen  # the run really grounded answers from the server
    rebuilt = cache / f"cl_index_{version}_v5.json"
    header = json.loads(rebuilt.read_bytes().partition(b"\n")[0])
    assert header["format"] == "cellreasoner-cl-index" and header["cl_version"] == version
    assert "Rebuilding the Cell Ontology index" in r.stderr and str(rebuilt) in r.stderr
    assert not list(cache.glob("*.pkl"))  # the old pickles are deleted, never opened


@pytest.mark.parametrize("damage", ["truncated", "edited", "foreign_version", "wrong_types",
                                    "not_json"])
def test_a_damaged_index_is_rebuilt_not_trusted(tmp_path, damage):
    from cellreasoner.ontology import _store
    from cellreasoner.ontology.index import _build_index, _cl_source

    version, raw = _cl_source()
    good = _build_index(version, raw)
    path = tmp_path / "idx.json"
    _store.save_index(path, good)
    head, _, body = path.read_bytes().partition(b"\n")
    header = json.loads(head)
    if damage == "truncated":
        path.write_bytes(head + b"\n" + body[: len(body) // 2])
    elif damage == "edited":  # same length, one label changed: the checksum catches it
        path.write_bytes(head + b"\n" + body.replace(b'"B cell"', b'"X cell"', 1))
    elif damage == "foreign_version":
        header["cl_version"] = "v1999-01-01"
        path.write_bytes(json.dumps(header).encode() + b"\n" + body)
    elif damage == "wrong_types":  # a consistent checksum over a body of the wrong shape
        import hashlib

        bad = json.dumps({**json.loads(body), "labels": ["CL:0000236"]}).encode()
        header.update(sha256=hashlib.sha256(bad).hexdigest(), length=len(bad))
        path.write_bytes(json.dumps(header).encode() + b"\n" + bad)
    else:
        path.write_bytes(b"\x80\x04K\x01.")
    index, why = _store.load_index(path, version)
    assert index is None and why
    assert _store.load_index(tmp_path / "missing.json", version)[0] is None
    _store.save_index(path, good)
    again, why = _store.load_index(path, version)
    assert why == "" and again["lookup"] == good["lookup"] and again["labels"] == good["labels"]
    assert again["deprecated"] == good["deprecated"] and again["synonyms"] == good["synonyms"]


def test_get_ontology_rebuilds_a_corrupt_index_file(tmp_path):
    """Through the process-wide loader in a fresh process: a garbage file at the index path
    gives a warning naming the file and a working, rewritten index."""
    from cellreasoner.ontology import _store

    cache = tmp_path / "cache"
    cache.mkdir()
    path = _store.index_path(cache, _cl_version())
    path.write_text('{"format": "cellreasoner-cl-index", "layout": 5}\n{"labels": ')
    r = _python("from cellreasoner.ontology import get_ontology\n"
                "print(get_ontology().label('CL:0000236'))", _env(cache))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "B cell"
    assert f"Rebuilding the Cell Ontology index: {path}" in r.stderr
    assert _store.load_index(path, _cl_version())[1] == ""


def test_no_pickle_or_eval_loaders_in_the_package():
    """An audit that stays true: nothing in src/ unpickles, evals or loads untrusted files
    with code execution (numba's own __pycache__ is discussed in the README)."""
    import re

    banned = re.compile(r"\bpickle\.loads?\(|\bjoblib\.load\(|(?<![.\w])eval\(|(?<![.\w])exec\(|"
                        r"allow_pickle\s*=\s*True|weights_only\s*=\s*False|yaml\.load\(|"
                        r"\bread_pickle\(|\bdill\.|\bcloudpickle\.")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "src").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert hits == []


# --------------------------------------------------------------------------- private cache

def _annotate_openai(port: int, src: Path, out: Path, env: dict, *extra: str,
                     umask: int | None = None) -> subprocess.CompletedProcess:
    return _cli(["annotate", str(src), "-o", str(out), "--backend", "openai", "--model", "m",
                 "--base-url", f"http://127.0.0.1:{port}/v1", "--no-progress", *extra], env,
                umask=umask)


def _open_modes(root: Path) -> dict[str, str]:
    """Everything under ``root`` (and root) that group or others may read, write or enter."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root.parent)): f"{_mode(p):04o}" for p in paths
            if _mode(p) & 0o077}


def test_cache_folder_and_files_are_private_whatever_the_umask(tmp_path, chat_server,
                                                               small_h5ad):
    """Under umask 000 the old code left the answer cache 0666 in a 0777 folder."""
    cache = tmp_path / "new" / "cache"
    r = _annotate_openai(chat_server, small_h5ad, tmp_path / "o.h5ad", _env(cache), umask=0)
    assert r.returncode == 0, r.stderr
    assert (cache / "annotations.sqlite").is_file() and list(cache.glob("cl_index_*.json"))
    assert _mode(cache) == 0o700 and _mode(cache / "annotations.sqlite") == 0o600
    assert _open_modes(cache) == {}
    # a cache file the user names, in a folder that does not exist yet
    before = _mode(tmp_path)
    own = tmp_path / "mine" / "answers.sqlite"
    r = _annotate_openai(chat_server, small_h5ad, tmp_path / "o2.h5ad", _env(cache),
                         "--cache", str(own), umask=0)
    assert r.returncode == 0, r.stderr
    assert _open_modes(own.parent) == {}
    assert _mode(tmp_path) == before  # an existing folder of the user's is left as it is


def test_existing_open_cache_is_tightened_with_a_warning(tmp_path, chat_server, small_h5ad):
    cache = tmp_path / "cache"
    first = _annotate_openai(chat_server, small_h5ad, tmp_path / "o.h5ad", _env(cache))
    assert first.returncode == 0, first.stderr
    os.chmod(cache, 0o755)  # as an older version (or a umask of 022) left it
    for f in cache.iterdir():
        os.chmod(f, 0o644)
    r = _annotate_openai(chat_server, small_h5ad, tmp_path / "o2.h5ad", _env(cache))
    assert r.returncode == 0, r.stderr
    assert f"Made the cellreasoner cache folder {cache} private (mode 0755 -> 0700)" in r.stderr
    assert _open_modes(cache) == {}  # the folder, the answer cache and the ontology index
    assert "Traceback" not in r.stderr


def test_judge_cache_is_private(tmp_path):
    from cellreasoner._sqlite import connect

    old = os.umask(0)
    try:
        db = connect(tmp_path / "j" / "judge.sqlite", ["CREATE TABLE IF NOT EXISTS t (a TEXT)"])
        db.execute("INSERT INTO t VALUES ('x')")
    finally:
        os.umask(old)
    try:
        assert _open_modes(tmp_path / "j") == {}
        assert {p.name for p in (tmp_path / "j").iterdir()} >= {"judge.sqlite",
                                                               "judge.sqlite-wal"}
    finally:
        db.close()


# --------------------------------------------------------------------------- secrets

#: Credentials carried by the server URL (userinfo password, secret-looking parameters).
URL_SECRETS = {"api-key": "K-apikey-9f8e7d6c", "token": "T-token-5a4b3c2d",
               "key": "K-key-1q2w3e4r", "secret": "S-secret-0o9i8u7y",
               "password": "P-password-7y6t5r4e", "sig": "G-sig-2w3e4r5t"}
USER_PASS = "Pw-userinfo-S3cretXYZ"
API_KEY = "sk-envkey-ZZ9988776655"


def _secret_url(port: int, userinfo: bool = True) -> str:
    query = "&".join(f"{k}={v}" for k, v in URL_SECRETS.items())
    user = f"alice:{USER_PASS}@" if userinfo else ""
    return f"http://{user}127.0.0.1:{port}/v1?{query}&model=keep-me"


def _leaks(blobs: dict[str, bytes]) -> dict[str, list[str]]:
    """Which secret appears in which output (raw or percent-encoded)."""
    import base64
    from urllib.parse import quote

    basic = base64.b64encode(f"alice:{USER_PASS}".encode()).decode()  # HTTP Basic header
    secrets = [USER_PASS, API_KEY, basic, *URL_SECRETS.values()]
    found = {}
    for where, blob in blobs.items():
        hit = [s for s in secrets if s.encode() in blob or quote(s).encode() in blob]
        if hit:
            found[where] = hit
    return found


def _outputs(tmp_path: Path, cache: Path, r: subprocess.CompletedProcess) -> dict[str, bytes]:
    blobs = {"stdout": r.stdout.encode(), "stderr": r.stderr.encode()}
    for p in [*tmp_path.glob("out*"), *cache.rglob("*")]:
        if p.is_file():
            blobs[str(p.relative_to(tmp_path))] = p.read_bytes()
    return blobs


def test_credentials_in_the_url_and_the_api_key_are_written_nowhere(tmp_path, chat_server,
                                                                     small_h5ad):
    """Old code put the URL's password and api-key into adata.uns, the report and stderr."""
    cache = tmp_path / "cache"
    url = _secret_url(chat_server)
    r = _cli(["-v", "annotate", str(small_h5ad), "-o", str(tmp_path / "out.h5ad"),
              "--csv", str(tmp_path / "out.csv"), "--report", str(tmp_path / "out.html"),
              "--label-column", "bulk_labels", "--backend", "openai", "--model", "m",
              "--base-url", url, "--api-key-env", "MY_SERVER_KEY", "--no-progress"],
             _env(cache, MY_SERVER_KEY=API_KEY))
    assert r.returncode == 0, r.stderr
    assert _Chat.seen and all(auth for _, auth in _Chat.seen)  # credentials were sent
    blobs = _outputs(tmp_path, cache, r)
    assert {"out.h5ad", "out.csv", "out.html", "cache/annotations.sqlite"} <= set(blobs)
    assert _leaks(blobs) == {}
    import anndata as ad

    shown = ad.read_h5ad(tmp_path / "out.h5ad").uns["cellreasoner"]["base_url"]
    assert shown.startswith("http://***@127.0.0.1:") and "model=keep-me" in shown


def test_a_server_echoing_credentials_in_an_error_leaks_nothing(tmp_path, chat_server,
                                                                small_h5ad):
    _Chat.status = 401
    cache = tmp_path / "cache"
    r = _cli(["annotate", str(small_h5ad), "-o", str(tmp_path / "out.h5ad"), "--backend",
              "openai", "--model", "m", "--base-url", _secret_url(chat_server, userinfo=False),
              "--no-progress"],
             _env(cache, OPENAI_API_KEY=API_KEY))
    assert r.returncode == 2 and r.stderr.count("error: ") == 1, r.stderr
    assert "401" in r.stderr and "Traceback" not in r.stderr
    assert _Chat.seen[0][1] == f"Bearer {API_KEY}"  # the server did get (and echo) the key
    assert _leaks(_outputs(tmp_path, cache, r)) == {}
    assert not (tmp_path / "out.h5ad").exists()


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:p4ssw0rd@h:1/v1", "http://***@h:1/v1"),
    ("https://TOKEN-ONLY-USER@h/v1", "https://***@h/v1"),
    ("http://h/v1?api_key=abcd1234&x=1", "http://h/v1?api_key=***&x=1"),
    ("http://h/v1?X-Amz-Signature=ab12cd34&AccessToken=zz99yy88",
     "http://h/v1?X-Amz-Signature=***&AccessToken=***"),
    ("http://h/v1#access_token=abcdef12", "http://h/v1#***"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://h:notaport@x/v1", "http://***@x/v1"),
])
def test_redact_url(url, shown):
    from cellreasoner._secrets import redact_text, redact_url

    assert redact_url(url) == shown
    assert redact_text(f"failed: {url}.") == f"failed: {shown}."



def test_redact_text_blanks_credentials_and_registered_secrets_not_prose():
    from cellreasoner._secrets import redact_text, register_secret

    register_secret("s3cr3t-registered-value")
    text = ("Authorization: Basic YWxpY2U6UHctdXNl and Bearer sk-abcdefghij; the server said "
            "s3cr3t-registered-value (percent-encoded s3cr3t%2Dregistered...); basic settings; "
            "Basic information")
    assert redact_text(text) == (
        "Authorization: Basic *** and Bearer ***; the server said *** (percent-encoded "
        "s3cr3t%2Dregistered...); basic settings; Basic information")

# --------------------------------------------------------------------------- CSV injection

#: Cell names a spreadsheet would run (and two that must stay as they are).
EVIL_CELLS = ['=HYPERLINK("http://evil.example/","click")', "+1+1", "-2+3", "@SUM(A1:A9)",
              "\tTAB", "'=already quoted", "-0.5", "'plain quote"]
EVIL_TRUTH = ["=cmd|' /C calc'!A0", "+T cell", "-NK", "@B cell"]


def _unsafe_fields(path: Path) -> list[str]:
    """CSV fields that start a formula (plain numbers such as -0.5 are not formulas)."""
    import csv

    from cellreasoner._spreadsheet import FORMULA_CHARS

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    out = []
    for row in rows:
        for field in row:
            if field[:1] and field[0] in FORMULA_CHARS:
                try:
                    float(field)
                except ValueError:
                    out.append(field)
    return out


@pytest.fixture
def evil_h5ad(tmp_path, _pbmc68k_cached) -> Path:
    cells = _pbmc68k_cached.raw.to_adata()[:12].copy()
    names = list(cells.obs_names)
    names[:len(EVIL_CELLS)] = EVIL_CELLS
    cells.obs_names = names
    truth = cells.obs["bulk_labels"].astype(str).to_numpy()
    truth[:len(EVIL_TRUTH)] = EVIL_TRUTH
    cells.obs["bulk_labels"] = truth
    path = tmp_path / "evil.h5ad"
    cells.write_h5ad(path)
    return path


def test_annotate_and_evaluate_csvs_escape_formulas_and_read_back_unchanged(
        tmp_path, chat_server, evil_h5ad):
    """Old code wrote ``=HYPERLINK(...)`` (and a ``-``/``+``/``@`` answer) into the CSVs as is."""
    import anndata as ad
    import pandas as pd

    from cellreasoner.evaluation import read_results

    _Chat.answer = "-T cell"  # the server's answer starts a formula too
    env = _env(tmp_path / "cache")
    r = _annotate_openai(chat_server, evil_h5ad, tmp_path / "out.h5ad", env, "--csv",
                         str(tmp_path / "out.csv"), "--label-column", "bulk_labels", "--n", "2",
                         "--temperature", "0.5")
    assert r.returncode == 0, r.stderr
    assert _unsafe_fields(tmp_path / "out.csv") == []
    raw = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert raw["cell_name"].tolist()[:3] == ["'" + c for c in EVIL_CELLS[:3]]
    assert raw["cell_name"].tolist()[6] == "-0.5"  # a number is not escaped
    assert raw["confidence"].tolist() == [1.0] * 12  # numbers stay numbers
    assert raw["response"].iloc[0] == "'-T cell"
    # the toolkit reads its own CSV back exactly as annotate had it
    adata = ad.read_h5ad(tmp_path / "out.h5ad")
    back = read_results(tmp_path / "out.csv").obs
    assert back.index.tolist() == adata.obs_names.tolist()
    assert back["labels"].tolist() == adata.obs["bulk_labels"].astype(str).tolist()
    assert back["response"].tolist() == adata.obs["cellreasoner_response"].tolist()
    # evaluate: the CSV scores as the .h5ad does; its own tables are escaped
    from cellreasoner.evaluation import evaluate

    via_csv = evaluate(tmp_path / "out.csv", truth="labels").per_cell
    via_h5ad = evaluate(tmp_path / "out.h5ad", truth="bulk_labels").per_cell
    cols = ["cell", "truth", "prediction", "score"]
    assert via_csv[cols].equals(via_h5ad[cols]) and via_csv["cell"].tolist()[0] == EVIL_CELLS[0]
    outdir = tmp_path / "eval"
    r = _cli(["evaluate", str(tmp_path / "out.csv"), "--truth", "labels", "-o", str(outdir),
              "--no-plots"], env)
    assert r.returncode == 0, r.stderr
    for name in ("metrics.csv", "per_label.csv", "scores.csv"):
        assert _unsafe_fields(outdir / name) == [], name
    scores = pd.read_csv(outdir / "scores.csv", keep_default_na=False)
    assert scores["truth"].tolist()[:4] == ["'" + t for t in EVIL_TRUTH]


@pytest.mark.parametrize("text", ["=1+1", "+A1", "-A1", "@A1", "\tx", "\rx", "'=x", "''+x",
                                  "'x", "x=1", "", "-0.5", "+3", "1e-5", "-inf", "- B cell"])
def test_escape_cell_round_trip(text):
    from cellreasoner._spreadsheet import FORMULA_CHARS, escape_cell, unescape_cell

    escaped = escape_cell(text)
    assert unescape_cell(escaped) == text
    if text and text[0] in FORMULA_CHARS:
        numeric = text in ("-0.5", "+3", "-inf")
        assert escaped == (text if numeric else "'" + text)


def test_spreadsheet_safe_leaves_numbers_and_escapes_categories():
    import numpy as np
    import pandas as pd

    from cellreasoner._spreadsheet import spreadsheet_safe, unescape_frame

    frame = pd.DataFrame({"x": [-0.5, 2.0], "n": [-1, 3], "flag": [True, False],
                          "label": pd.Categorical(["=A1", "B cell"]), "=col": ["ok", "-x"]})
    safe = spreadsheet_safe(frame)
    assert safe["x"].tolist() == [-0.5, 2.0] and safe["n"].dtype == np.int64
    assert list(safe.columns) == ["x", "n", "flag", "label", "'=col"]
    assert safe["label"].tolist() == ["'=A1", "B cell"] and safe["'=col"].tolist() == ["ok", "'-x"]
    assert unescape_frame(safe).equals(frame)
    clean = pd.DataFrame({"a": ["B cell"], "b": [1.0]})
    assert spreadsheet_safe(clean) is clean


def test_an_unusable_cache_location_warns_and_still_works(tmp_path):
    """A cache path that cannot be a folder: two warnings naming it, the index from memory."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = _python("from cellreasoner.ontology import get_ontology\n"
                "print(get_ontology().label('CL:0000236'))", _env(blocker / "cache"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "B cell"
    assert f"Could not create the cellreasoner cache folder {blocker / 'cache'}" in r.stderr
    assert "Could not cache the Cell Ontology index" in r.stderr
