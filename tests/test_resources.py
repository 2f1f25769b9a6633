"""The pinned-hash download of the ranked gene list, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from cellreasoner import resources
from cellreasoner.errors import InputError


@pytest.fixture
def http_dir(tmp_path):
    """Serve ``tmp_path/www`` on a free loopback port; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_local_list(monkeypatch, tmp_path):
    monkeypatch.delenv(resources.GENE_LIST_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CELLREASONER_CACHE", str(cache))
    return cache


def test_download_once_with_the_pinned_hash(http_dir, no_local_list, gene_list_path,
                                            monkeypatch):
    www, base = http_dir
    (www / "ranked_hvg.list").write_bytes(gene_list_path.read_bytes())
    monkeypatch.setattr(resources, "RANKED_HVG_URL", f"{base}/ranked_hvg.list")
    assert resources.local_gene_list_path() is None
    genes = resources.load_gene_list()
    assert len(genes) == 10_000 and genes[0] == "GNLY"
    assert resources.local_gene_list_path() == no_local_list / "ranked_hvg.list"
    (www / "ranked_hvg.list").unlink()  # a second call needs no server: it uses the cache
    assert resources.load_gene_list() == genes


def test_a_tampered_download_is_refused(http_dir, no_local_list, gene_list_path, monkeypatch):
    www, base = http_dir
    (www / "ranked_hvg.list").write_text("GNLY\nNOT_THE_PUBLISHED_LIST\n")
    monkeypatch.setattr(resources, "RANKED_HVG_URL", f"{base}/ranked_hvg.list")
    with pytest.raises(InputError, match="SHA256|hash"):
        resources.load_gene_list()
    assert resources.local_gene_list_path() is None


def test_offline_error_says_where_to_put_the_file(no_local_list, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(resources, "RANKED_HVG_URL", f"http://127.0.0.1:{port}/ranked_hvg.list")
    with pytest.raises(InputError) as err:
        resources.load_gene_list()
    msg = str(err.value)
    assert str(no_local_list / "ranked_hvg.list") in msg and "--gene-list" in msg


def test_explicit_path_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.list"):
        resources.load_gene_list(tmp_path / "missing.list")
    empty = tmp_path / "empty.list"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        resources.load_gene_list(empty)
    assert Path(resources.ranked_gene_list_path(empty)) == empty
