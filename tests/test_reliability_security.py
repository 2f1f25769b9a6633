"""Reliability and security: nothing run from the cache, nothing leaked, nothing world-readable.

Everything goes through real files, real subprocesses of the ``cellreasoner`` CLI and a real
OpenAI-compatible HTTP server on 127.0.0.1 (bounded in requests and time):

- the Cell Ontology index cache is never unpickled: a planted pickle (old and new file names)
  runs nothing, and a corrupt / foreign-version index is rebuilt, not trusted;
- credentials in ``--base-url`` (userinfo, ``api-key``/``token``/``key``/``secret``/``password``/
  ``sig`` parameters) and the API key reach none of: the .h5ad, the CSV, the HTML report,
  stdout, stderr, the cache files;
- the cache folder is 0700 and its files 0600 whatever the umask; existing ones are tightened.

CSV formula injection: ``test_reliability_spreadsheet.py``; helpers: ``security_support.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
from security_support import (
    REPO,
    Chat,
    annotate_openai,
    cli,
    env_for,
    mode,
    python,
    running_chat_server,
)


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory, _pbmc68k_cached) -> Path:
    """12 real PBMCs (log-normalised, 765 genes) with their labels."""
    path = tmp_path_factory.mktemp("sec_in") / "cells.h5ad"
    _pbmc68k_cached.raw.to_adata()[:12].copy().write_h5ad(path)
    return path


@pytest.fixture
def chat_server():
    with running_chat_server() as port:
        yield port


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
    r = cli(["annotate", str(small_h5ad), "-o", str(out), "--backend", "openai", "--model", "m",
              "--base-url", f"http://127.0.0.1:{chat_server}/v1", "--no-progress"],
             env_for(cache))
    assert r.returncode == 0, r.stderr
    assert [m.name for m in markers if m.exists()] == []
    assert Chat.seen  # the run really grounded answers from the server
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
    r = python("from cellreasoner.ontology import get_ontology\n"
                "print(get_ontology().label('CL:0000236'))", env_for(cache))
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
    # the one exception: the local engine's worker processes exchange pickled messages with
    # the process that started them over pipes it created for them (as multiprocessing does);
    # those loads read the pipes, never a file
    pipes = {"src/cellreasoner/distributed/processes.py": "pickle.load(self.proc.stdout)",
             "src/cellreasoner/distributed/_worker.py": "pickle.load(inbox)"}
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "src").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)
            and pipes.get(str(p.relative_to(REPO))) not in line]
    assert hits == []
    worker = (REPO / "src/cellreasoner/distributed/_worker.py").read_text()
    assert "inbox = sys.stdin.buffer" in worker and " open(" not in worker


# --------------------------------------------------------------------------- private cache

def _open_modes(root: Path) -> dict[str, str]:
    """Everything under ``root`` (and root) that group or others may read, write or enter."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root.parent)): f"{mode(p):04o}" for p in paths
            if mode(p) & 0o077}


def test_cache_folder_and_files_are_private_whatever_the_umask(tmp_path, chat_server,
                                                               small_h5ad):
    """Under umask 000 the old code left the answer cache 0666 in a 0777 folder."""
    cache = tmp_path / "new" / "cache"
    r = annotate_openai(chat_server, small_h5ad, tmp_path / "o.h5ad", env_for(cache), umask=0)
    assert r.returncode == 0, r.stderr
    assert (cache / "annotations.sqlite").is_file() and list(cache.glob("cl_index_*.json"))
    assert mode(cache) == 0o700 and mode(cache / "annotations.sqlite") == 0o600
    assert _open_modes(cache) == {}
    # a cache file the user names, in a folder that does not exist yet
    before = mode(tmp_path)
    own = tmp_path / "mine" / "answers.sqlite"
    r = annotate_openai(chat_server, small_h5ad, tmp_path / "o2.h5ad", env_for(cache),
                         "--cache", str(own), umask=0)
    assert r.returncode == 0, r.stderr
    assert _open_modes(own.parent) == {}
    assert mode(tmp_path) == before  # an existing folder of the user's is left as it is


def test_existing_open_cache_is_tightened_with_a_warning(tmp_path, chat_server, small_h5ad):
    cache = tmp_path / "cache"
    first = annotate_openai(chat_server, small_h5ad, tmp_path / "o.h5ad", env_for(cache))
    assert first.returncode == 0, first.stderr
    os.chmod(cache, 0o755)  # as an older version (or a umask of 022) left it
    for f in cache.iterdir():
        os.chmod(f, 0o644)
    r = annotate_openai(chat_server, small_h5ad, tmp_path / "o2.h5ad", env_for(cache))
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
    r = cli(["-v", "annotate", str(small_h5ad), "-o", str(tmp_path / "out.h5ad"),
              "--csv", str(tmp_path / "out.csv"), "--report", str(tmp_path / "out.html"),
              "--label-column", "bulk_labels", "--backend", "openai", "--model", "m",
              "--base-url", url, "--api-key-env", "MY_SERVER_KEY", "--no-progress"],
             env_for(cache, MY_SERVER_KEY=API_KEY))
    assert r.returncode == 0, r.stderr
    assert Chat.seen and all(auth for _, auth in Chat.seen)  # credentials were sent
    blobs = _outputs(tmp_path, cache, r)
    assert {"out.h5ad", "out.csv", "out.html", "cache/annotations.sqlite"} <= set(blobs)
    assert _leaks(blobs) == {}
    import anndata as ad

    shown = ad.read_h5ad(tmp_path / "out.h5ad").uns["cellreasoner"]["base_url"]
    assert shown.startswith("http://***@127.0.0.1:") and "model=keep-me" in shown


def test_a_server_echoing_credentials_in_an_error_leaks_nothing(tmp_path, chat_server,
                                                                small_h5ad):
    Chat.status = 401
    cache = tmp_path / "cache"
    r = cli(["annotate", str(small_h5ad), "-o", str(tmp_path / "out.h5ad"), "--backend",
              "openai", "--model", "m", "--base-url", _secret_url(chat_server, userinfo=False),
              "--no-progress"],
             env_for(cache, OPENAI_API_KEY=API_KEY))
    assert r.returncode == 2 and r.stderr.count("error: ") == 1, r.stderr
    assert "401" in r.stderr and "Traceback" not in r.stderr
    assert Chat.seen[0][1] == f"Bearer {API_KEY}"  # the server did get (and echo) the key
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
    from cellreasoner._secrets import redact_text, redact_url, register_secret

    register_secret("s3cr3t-registered-value")
    text = ("Authorization: Basic YWxpY2U6UHctdXNl and Bearer sk-abcdefghij; the server said "
            "s3cr3t-registered-value (percent-encoded s3cr3t%2Dregistered...); basic settings; "
            "Basic information")
    assert redact_text(text) == (
        "Authorization: Basic *** and Bearer ***; the server said *** (percent-encoded "
        "s3cr3t%2Dregistered...); basic settings; Basic information")
    redact_url("http://someuser:An0ther-pw@h/v1")  # registers the password, not the user name
    assert redact_text("someuser typed An0ther-pw") == "someuser typed ***"

def test_an_unusable_cache_location_warns_and_still_works(tmp_path):
    """A cache path that cannot be a folder: two warnings naming it, the index from memory."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = python("from cellreasoner.ontology import get_ontology\n"
                "print(get_ontology().label('CL:0000236'))", env_for(blocker / "cache"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "B cell"
    assert f"Could not create the cellreasoner cache folder {blocker / 'cache'}" in r.stderr
    assert "Could not cache the Cell Ontology index" in r.stderr


def test_python_api_logs_and_provenance_hold_no_url_credentials(tmp_path, chat_server,
                                                                  small_h5ad, caplog):
    """From Python (no CLI): httpx logs each request URL at INFO; uns keeps the URL."""
    import logging

    import anndata as ad

    from cellreasoner.annotation import annotate

    url = _secret_url(chat_server)
    # the HTTP client's own level too: an earlier CLI run in this process quiets it (as it
    # should); the openai SDK 3.x logs through httpx2
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx2"):
        res = annotate(ad.read_h5ad(small_h5ad), "openai", model="m", cache=False,
                       backend_options={"base_url": url}, progress=False)
    assert "HTTP Request: POST http://***@127.0.0.1" in caplog.text  # the log line is kept
    assert _leaks({"log": caplog.text.encode(), "uns": repr(res.adata.uns).encode()}) == {}
