"""Faults from model servers: a real fault-injecting server on 127.0.0.1 (``fault_server``).

Every case ends in a clear error or a correct result: transient faults are retried, a prompt
whose replies stay malformed is recorded as failed (its cells "Unknown", not cached) while the
run goes on, a hung server says it timed out, garbage answers become "Unknown" with a parse
flag, and no API key shows in any output. Requests are counted by the server itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import pytest
from fault_server import LABEL, FaultServer, one_gene_cells

from cellreasoner.annotation import annotate
from cellreasoner.backends.openai import OpenAIBackend
from cellreasoner.errors import BackendError
from cellreasoner.parsing import is_label, parse_response
from cellreasoner.prompts import INSTRUCTION_DIRECT, Prompt, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
SHORT = SamplingParams.for_mode(False, max_new_tokens=8)
MALFORMED = ("bad_json", "empty_choices", "content_not_string", "message_string",
             "json_array")


@pytest.fixture(scope="module")
def genes(gene_list_path) -> list[str]:
    """Eight real symbols from the ranked list: one prompt per gene."""
    return [g.strip() for g in gene_list_path.read_text().splitlines() if g.strip()][:8]


def _prompts(genes: list[str]) -> list[Prompt]:
    return [Prompt(INSTRUCTION_DIRECT, g) for g in genes]


def _cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellreasoner.cli", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("fault", MALFORMED)
def test_a_transient_malformed_reply_is_asked_again(fault, genes):
    """One bad reply per prompt used to abort the run (bad JSON, empty choices) or raise an
    AttributeError / TypeError traceback (message a string, body an array, ...)."""
    with FaultServer(fault, times=1) as server:
        backend = OpenAIBackend(model="m", base_url=server.url, concurrency=4, max_retries=2)
        out = backend.generate(_prompts(genes[:3]), SHORT)
    assert [g[0].text for g in out] == [f"<think>{g} is expressed.</think>{LABEL}"
                                        for g in genes[:3]]
    assert all(v == 2 for v in server.asked.values())  # the bad reply, then the good one
    assert backend.stats["failed_prompts"] == 0


@pytest.mark.parametrize("fault", ["429", "500", "503", "reset"])
def test_transient_http_faults_are_retried(fault, genes):
    with FaultServer(fault, times=1, retry_after_s=1) as server:
        backend = OpenAIBackend(model="m", base_url=server.url, concurrency=2, max_retries=2)
        started = time.monotonic()
        out = backend.generate(_prompts(genes[:2]), SHORT)
    assert all(g[0].text.endswith(LABEL) for g in out)
    assert sorted(server.asked.values()) == [2, 2]
    if fault == "429":  # the server's Retry-After (1 s) is honoured, not a shorter backoff
        assert time.monotonic() - started >= 0.95


def test_a_prompt_whose_replies_stay_malformed_fails_alone_and_is_not_cached(genes, tmp_path):
    cells = one_gene_cells(genes)
    cache = tmp_path / "c.sqlite"
    opts = {"concurrency": 3, "max_retries": 1}
    with FaultServer("json_array", times=-1, only=genes[2]) as server:
        res = annotate(cells, "openai", model="m", gene_list=genes, cache=cache,
                       backend_options={"base_url": server.url, **opts}, progress=False)
        assert server.asked[genes[2]] == 2  # asked, then asked again once (max_retries=1)
        labels = cells.obs["cellreasoner_label"].astype(str).tolist()
        assert labels == [LABEL, LABEL, "Unknown", *[LABEL] * 5]
        failure = cells.obs["cellreasoner_failure"].astype(str).tolist()
        assert failure == ["", "", "request", *[""] * 5]
        assert res.provenance["failed_prompts"] == 1 and res.provenance["failed_cells"] == 1
        assert res.provenance["model_calls"] == 8
        # the failure was not cached as an answer: a rerun asks only that prompt again
        again = annotate(cells, "openai", model="m", gene_list=genes, cache=cache,
                         backend_options={"base_url": server.url, **opts}, progress=False,
                         copy=True)
    assert server.asked[genes[2]] == 4
    assert all(server.asked[g] == 1 for g in genes if g != genes[2])
    assert again.provenance["cache_hits"] == 7 and again.provenance["model_calls"] == 1


def test_fail_on_error_sets_the_exit_status_and_the_output_is_still_written(genes, tmp_path):
    src, gene_file = tmp_path / "in.h5ad", tmp_path / "genes.txt"
    one_gene_cells(genes[:4]).write_h5ad(src)
    gene_file.write_text("\n".join(genes[:4]) + "\n")
    with FaultServer("empty_choices", times=-1, only=genes[1]) as server:
        base = [str(src), "--backend", "openai", "--model", "m", "--base-url", server.url,
                "--gene-list", str(gene_file), "--max-retries", "1", "--no-cache",
                "--no-progress"]
        quiet = _cli(["annotate", *base, "-o", str(tmp_path / "a.h5ad")])
        strict = _cli(["annotate", *base, "-o", str(tmp_path / "b.h5ad"), "--fail-on-error"])
    assert quiet.returncode == 0, quiet.stderr
    assert strict.returncode == 3, strict.stderr
    for proc in (quiet, strict):
        assert "Traceback" not in proc.stderr
        assert "1 prompt(s) (1 cell(s)) got no usable answer" in proc.stderr
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    assert back.obs["cellreasoner_label"].astype(str).tolist() == [LABEL, "Unknown", LABEL,
                                                                   LABEL]
    assert back.uns["cellreasoner"]["failed_prompts"] == 1


def test_a_hung_server_says_it_timed_out_after_n_seconds_and_attempts(genes, tmp_path):
    """It used to wait 6 x 120 s and then say 'Cannot reach the model server... Is it
    running?' although the server had accepted the connection."""
    with FaultServer("hang", times=-1, hang_s=20) as server:
        backend = OpenAIBackend(model="m", base_url=server.url, timeout=1, max_retries=1)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            backend.generate(_prompts(genes[:1]), SHORT)
        elapsed = time.monotonic() - started
        message = str(info.value)
        assert "did not answer within 1 s" in message and "2 attempt(s)" in message
        assert "Cannot reach" not in message and "--timeout" in message
        assert elapsed < 10 and server.asked[genes[0]] == 2
        src, gene_file = tmp_path / "in.h5ad", tmp_path / "genes.txt"
        one_gene_cells(genes[:1]).write_h5ad(src)
        gene_file.write_text(genes[0] + "\n")
        proc = _cli(["annotate", str(src), "-o", str(tmp_path / "o.h5ad"), "--backend",
                     "openai", "--model", "m", "--base-url", server.url, "--gene-list",
                     str(gene_file), "--timeout", "1", "--max-retries", "0", "--no-cache",
                     "--no-progress"])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: The model server at") and "Traceback" not in proc.stderr
    assert "did not answer within 1 s" in last and "1 attempt(s)" in last
    assert not (tmp_path / "o.h5ad").exists()


def test_a_connection_dropped_on_every_request_does_not_claim_the_server_is_down(genes):
    with FaultServer("reset", times=-1) as server:
        backend = OpenAIBackend(model="m", base_url=server.url, max_retries=1)
        with pytest.raises(BackendError, match="was dropped before an answer") as info:
            backend.generate(_prompts(genes[:1]), SHORT)
    assert "Cannot reach" not in str(info.value) and "2 attempt(s)" in str(info.value)
    assert server.asked[genes[0]] == 2


@pytest.mark.parametrize("fault", ["huge_random", "huge_line"])
def test_garbage_answers_are_unknown_with_a_parse_flag_and_the_raw_text_kept(fault, genes,
                                                                            tmp_path):
    """2 MB of random text gave dozens of distinct 'labels'; a 200,000-character answer
    became a label and was printed on the summary line."""
    src, gene_file = tmp_path / "in.h5ad", tmp_path / "genes.txt"
    one_gene_cells(genes).write_h5ad(src)
    gene_file.write_text("\n".join(genes) + "\n")
    with FaultServer(fault, times=-1, only=None) as server:
        proc = _cli(["annotate", str(src), "-o", str(tmp_path / "o.h5ad"), "--backend",
                     "openai", "--model", "m", "--base-url", server.url, "--gene-list",
                     str(gene_file), "--no-cache", "--no-progress"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    back = ad.read_h5ad(tmp_path / "o.h5ad")
    assert set(back.obs["cellreasoner_label"].astype(str)) == {"Unknown"}
    assert set(back.obs["cellreasoner_failure"].astype(str)) == {"parse"}
    assert back.obs["cellreasoner_response"].str.len().min() >= 200_000  # raw answer kept
    assert max(len(line) for line in proc.stderr.splitlines()) < 400
    assert "labels: Unknown (8)" in proc.stderr and "8 cell(s) got an answer that is not" \
        in proc.stderr


def test_the_label_rule_keeps_real_labels_and_refuses_garbage(shared_data):
    import pandas as pd

    truth = pd.read_csv(shared_data / "pair_scores_dev.csv")["Ground Truth"].astype(str)
    assert all(is_label(t) for t in truth.unique())  # 81 real annotation labels
    for real in ("CD14+ Monocyte", "γδ T cell", "CD4+ T (memory)", "Treg", "B_GC", "pDC"):
        assert parse_response(f"<think>CD3E.</think>{real}").label == real
    for garbage in ("T" * 101, "word " * 13, "12345", "B cell {1}", "ok\x07cell",
                    "k$3}a ~Xq(b", "x" * 41):
        parsed = parse_response(garbage)
        assert not is_label(garbage) and parsed.label == "Unknown" and parsed.unparsed
    # a response cut off inside <think> is incomplete: "Unknown", not a label (#13)
    cut = parse_response("<think>cut off")
    assert cut.label == "Unknown" and not cut.complete and not cut.unparsed
    assert parse_response("").label == ""  # no answer at all stays empty


def test_real_labels_still_parse(genes):
    with FaultServer("ok") as server:
        res = annotate(one_gene_cells(genes[:3]), "openai", model="m", gene_list=genes,
                       cache=False, backend_options={"base_url": server.url}, progress=False)
    assert res.table["label"].tolist() == [LABEL] * 3
    assert "failure" not in res.table and "failed_prompts" not in res.provenance


def test_the_api_key_is_sent_but_never_shown_and_http_lines_need_verbose(genes, tmp_path,
                                                                        monkeypatch):
    secret = "sk-test-SECRET-7f3a9c"
    monkeypatch.setenv("CELLREASONER_TEST_KEY", secret)
    src, gene_file = tmp_path / "in.h5ad", tmp_path / "genes.txt"
    one_gene_cells(genes[:2]).write_h5ad(src)
    gene_file.write_text("\n".join(genes[:2]) + "\n")
    with FaultServer("500", times=1) as server:
        args = ["annotate", str(src), "--backend", "openai", "--model", "m", "--base-url",
                server.url, "--api-key-env", "CELLREASONER_TEST_KEY", "--gene-list",
                str(gene_file), "--no-cache", "--no-progress"]
        plain = _cli([*args, "-o", str(tmp_path / "a.h5ad"), "--csv", str(tmp_path / "a.csv")])
        verbose = _cli(["-v", *args, "-o", str(tmp_path / "b.h5ad")])
        sent = {h.get("Authorization") or h.get("authorization") for h in server.headers}
    assert plain.returncode == 0 and verbose.returncode == 0, plain.stderr + verbose.stderr
    assert sent == {f"Bearer {secret}"}  # the key is used ...
    outputs = [plain.stdout, plain.stderr, verbose.stdout, verbose.stderr,
               (tmp_path / "a.csv").read_text(),
               json.dumps(ad.read_h5ad(tmp_path / "a.h5ad").uns["cellreasoner"], default=str)]
    assert all(secret not in text for text in outputs)  # ... and never shown
    assert (tmp_path / "a.h5ad").read_bytes().find(secret.encode()) == -1
    # httpx's one INFO line per request only with -v
    assert "HTTP Request:" not in plain.stderr
    assert "HTTP Request: POST" in verbose.stderr


def test_without_a_key_no_authorization_header_is_sent(genes, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer("ok") as server:
        OpenAIBackend(model="m", base_url=server.url).generate(_prompts(genes[:1]), SHORT)
    assert not any(k.lower() == "authorization" for h in server.headers for k in h)


def test_the_llm_judge_reports_a_prompt_the_server_never_answered_well(tmp_path):
    """A failed prompt reaches the judge as failed generations, not as an empty answer."""
    from cellreasoner.evaluation import LLMJudge

    with FaultServer("message_string", times=-1) as server:
        judge = LLMJudge(OpenAIBackend(model="m", base_url=server.url, max_retries=1),
                         cache_path=tmp_path / "judge.sqlite")
        with pytest.raises(BackendError, match="gave no usable answer for pair") as info:
            judge.judge_many([("B cell", "T cell")])
        judge.close()
    assert "'message' is a str" in str(info.value)
