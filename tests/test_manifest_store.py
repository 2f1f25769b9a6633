"""The Ray run manifest on an object store: a real S3 server on 127.0.0.1 (moto's), and
``file://`` URIs.

pyarrow's own S3 client talks to the server (credentials from the environment, the endpoint
in the URI's ``endpoint_override=`` as a user would write it); the rerun is a second
:class:`RunManifest` over the same URI, and the end-to-end run a real ``annotate(...,
engine="ray")`` on the local Ray cluster of tests/test_ray.py.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from cellreasoner.annotation import annotate
from cellreasoner.cli import main
from cellreasoner.distributed.manifest import RunManifest
from cellreasoner.errors import InputError, OutputError

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
pafs = pytest.importorskip("pyarrow.fs")

BUCKET = "runs"
KEY_ID, SECRET = "AKIAMANIFESTKEYID0001", "wJalrXUtnFEMI-manifest-SECRET-0001"
FRAME = pd.DataFrame({"label": ["B cell", "NK cell", "T cell"], "confidence": [0.9, 0.8, 0.7]})


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; yields the URI query that reaches it."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY",
                            "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(name, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            # one PutObject per object, as RunManifest writes (moto 5.2.1 answers a multipart
            # upload's completion with a body pyarrow rejects: getmoto/moto#10055)
            fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                                   region="us-east-1", allow_bucket_creation=True,
                                   allow_bucket_deletion=True,
                                   allow_delayed_open=True)
            fs.create_dir(BUCKET)
            yield SimpleS3(fs, f"endpoint_override={host}:{port}&scheme=http&region=us-east-1")
        finally:
            server.stop()


class SimpleS3:
    """The test server: a pyarrow client for looking at what was written, and the query."""

    def __init__(self, fs, query: str) -> None:
        self.fs, self.query = fs, query

    def uri(self, prefix: str, userinfo: str = "") -> str:
        return f"s3://{userinfo}{BUCKET}/{prefix}?{self.query}"

    def objects(self, prefix: str) -> dict[str, bytes]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                        allow_not_found=True))
        out = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                with self.fs.open_input_stream(info.path) as f:
                    out[info.path.removeprefix(f"{BUCKET}/{prefix}/")] = f.read()
        return out


def test_rerun_reads_blocks_back_and_refuses_a_second_record(s3):
    uri = s3.uri("rerun")
    first = RunManifest(uri, {"input": "a.h5ad", "n": 1})
    assert first.blocks == {} and first.folder == uri  # nothing there yet
    first.record("cells 0-3", FRAME)
    first.record("cells 3-6", FRAME.iloc[::-1].reset_index(drop=True))
    with pytest.raises(RuntimeError, match="already recorded"):
        first.record("cells 0-3", FRAME)
    stored = s3.objects("rerun")
    assert sorted(stored) == sorted(["manifest.json", *(e["file"] for e in first.blocks.values())])
    listed = json.loads(stored["manifest.json"])["blocks"]
    assert {b: e["rows"] for b, e in listed.items()} == {"cells 0-3": 3, "cells 3-6": 3}
    assert "a.h5ad" not in stored["manifest.json"].decode()  # only the settings' hash

    rerun = RunManifest(uri, {"input": "a.h5ad", "n": 1})  # the same command again
    assert rerun.finished("cells 0-3") and rerun.finished("cells 3-6")
    assert not rerun.finished("cells 6-9")
    pd.testing.assert_frame_equal(rerun.load("cells 0-3"), FRAME)
    pd.testing.assert_frame_equal(rerun.load("cells 3-6"),
                                  FRAME.iloc[::-1].reset_index(drop=True))
    assert rerun.skipped == 2
    with pytest.raises(RuntimeError, match="already recorded"):
        rerun.record("cells 3-6", FRAME)
    rerun.record("cells 6-9", FRAME)  # the rest of the run
    assert len(RunManifest(uri, {"input": "a.h5ad", "n": 1}).blocks) == 3


def test_other_settings_or_a_lost_block_are_not_reused(s3, caplog):
    uri = s3.uri("settings")
    RunManifest(uri, {"model": "a"}).record("cells 0-3", FRAME)
    with caplog.at_level(logging.WARNING, logger="cellreasoner.distributed.manifest"):
        other = RunManifest(uri, {"model": "b"})
    assert not other.finished("cells 0-3") and other.blocks == {}
    assert "belongs to a run with other settings" in caplog.text
    # a block object that is gone (deleted by hand) is answered again, not read back
    again = RunManifest(uri, {"model": "a"})
    s3.fs.delete_file(f"{BUCKET}/settings/{again.blocks['cells 0-3']['file']}")
    assert not RunManifest(uri, {"model": "a"}).finished("cells 0-3")


def test_credentials_in_the_uri_are_never_shown_or_stored(s3, caplog):
    uri = s3.uri("secret", userinfo=f"{KEY_ID}:{SECRET}@")  # pyarrow signs with these
    with caplog.at_level(logging.INFO):
        m = RunManifest(uri, {"n": 1})
        m.record("cells 0-3", FRAME)
        RunManifest(uri, {"n": 2})  # logs a warning naming the manifest
    assert "belongs to a run with other settings" in caplog.text
    shown = [str(m.folder), str(m.path), caplog.text]
    for text in shown:
        assert KEY_ID not in text and SECRET not in text
    assert str(m.folder).startswith(f"s3://***@{BUCKET}/secret?")
    for name, data in s3.objects("secret").items():
        assert KEY_ID.encode() not in data and SECRET.encode() not in data, name
    # secrets in the query: pyarrow refuses them; the message names the redacted URI
    for query in (f"secret_key={SECRET}", f"session_token={SECRET}"):
        with pytest.raises(InputError) as err:
            RunManifest(f"s3://{BUCKET}/q?{s3.query}&{query}", {})
        assert SECRET not in str(err.value) and "AWS_SECRET_ACCESS_KEY" in str(err.value)
        assert f"s3://{BUCKET}/q?" in str(err.value)


def test_bad_stores_are_one_clear_error(s3):
    with pytest.raises(InputError, match=r"Manifest foo://\*\*\*@b/x: .*s3://bucket/prefix") \
            as err:
        RunManifest(f"foo://{KEY_ID}:{SECRET}@b/x", {})
    assert SECRET not in str(err.value) and KEY_ID not in str(err.value)
    with pytest.raises(InputError, match="hdfs://127.0.0.1:1/x: the store cannot be opened"):
        RunManifest("hdfs://127.0.0.1:1/x", {})  # no JVM / libhdfs here, no namenode there
    with pytest.raises(InputError, match=r"Manifest s3:.*endpoint_override.*: name a bucket"):
        RunManifest(f"s3://?{s3.query}", {})
    with pytest.raises(InputError, match="the bucket 'no-such-bucket' does not exist"):
        RunManifest(f"s3://no-such-bucket/x?{s3.query}", {})
    s3.fs.open_output_stream(f"{BUCKET}/a-file").close()
    with pytest.raises(InputError, match="an object is in the way"):
        RunManifest(s3.uri("a-file"), {})
    with pytest.raises(InputError, match=r"Manifest s3://\*\*\*@runs/x\?.*cannot be reached.*"
                                         "endpoint_override"):  # nothing listens on port 1
        RunManifest(f"s3://{KEY_ID}:{SECRET}@{BUCKET}/x?endpoint_override=127.0.0.1:1"
                    "&scheme=http", {})


def test_a_store_lost_mid_run_is_one_output_error(s3):
    s3.fs.create_dir("gone")
    m = RunManifest(f"s3://{KEY_ID}:{SECRET}@gone/run?{s3.query}", {})
    s3.fs.delete_dir("gone")  # the bucket goes away while the run answers its blocks
    with pytest.raises(OutputError, match=r"Manifest s3://\*\*\*@gone/run/blocks/\w+\.parquet\?"
                                          ".* cannot be written .*rerun the same command") as err:
        m.record("cells 0-3", FRAME)
    assert SECRET not in str(err.value) and KEY_ID not in str(err.value)
    assert not m.finished("cells 0-3")


def test_file_uri_is_a_local_folder(tmp_path):
    folder = tmp_path / "m"
    m = RunManifest(folder.as_uri(), {"n": 1})
    assert m.folder == folder  # a plain path: the local atomic writes, as without a URI
    m.record("cells 0-3", FRAME)
    assert json.loads((folder / "manifest.json").read_text())["blocks"]["cells 0-3"]["rows"] == 3
    rerun = RunManifest(str(folder), {"n": 1})  # the same folder given as a path
    pd.testing.assert_frame_equal(rerun.load("cells 0-3"), FRAME)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="a file is in the way"):
        RunManifest((tmp_path / "f").as_uri(), {})
    with pytest.raises(InputError, match="file://relative/m: .*file:///path"):
        RunManifest("file://relative/m", {})


@pytest.mark.xdist_group("ray")  # on the Ray cluster of tests/test_ray.py
def test_ray_rerun_from_s3_skips_every_block(s3, ray_cluster, cells_12k, cells_12k_table,
                                             tmp_path, capsys):
    """A Ray run with its manifest on S3 (credentials in the URI); the same command again, from
    the CLI, reads every block back (counted) and shows the URI only redacted."""
    uri = s3.uri("ray", userinfo=f"{KEY_ID}:{SECRET}@")
    first = annotate(str(cells_12k), engine="ray", chunk_size=4_000, manifest=uri,
                     progress=False)
    pd.testing.assert_frame_equal(first.table, cells_12k_table)
    assert first.provenance["manifest_blocks"] == 3 and first.provenance["skipped_blocks"] == 0
    shown = first.provenance["manifest"]
    assert shown.startswith(f"s3://***@{BUCKET}/ray?") and SECRET not in shown
    assert len(s3.objects("ray")) == 4  # manifest.json and three blocks, each once

    out = tmp_path / "cells.parquet"
    rc = main(["annotate", str(cells_12k), "-o", str(out), "--engine", "ray", "--chunk-size",
               "4000", "--manifest", uri, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0
    assert f"manifest s3://***@{BUCKET}/ray?" in err and "3 block(s), 3 read back" in err
    assert SECRET not in err and KEY_ID not in err
    assert SECRET.encode() not in out.read_bytes() and KEY_ID.encode() not in out.read_bytes()
    table = pd.read_parquet(out)
    assert table["cell_name"].tolist() == cells_12k_table.index.tolist()  # every cell once
    assert table["label"].tolist() == cells_12k_table["label"].tolist()
    assert len(s3.objects("ray")) == 4  # nothing written again
