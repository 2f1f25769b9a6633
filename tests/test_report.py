"""The offline HTML report, exercised in a real headless Chromium (Playwright)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.report import build_report, write_report
from cellreasoner.report._data import _json_for_script, _subsample

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

EVIL_RESPONSE = ('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
                 '<img src="https://example.invalid/pixel.png"> CD14+ Monocyte')
EVIL_REASONING = ("</script><script>window.__pwned=3</script> CD14 and LYZ are high; "
                  "MS4A1 supports nothing. <!-- @@DATA@@ \u2028")
EVIL_LABEL = "<b onmouseover=window.__pwned=4>bold</b> $x$"
EVIL_CELL = 3


def _annotated(adata):
    """pbmc68k_reduced with a cluster-majority prediction and annotate()-style columns."""
    majority = adata.obs.groupby("louvain", observed=True)["bulk_labels"].agg(
        lambda s: s.value_counts().index[0]
    )
    obs = adata.obs
    obs["cellreasoner_label"] = obs["louvain"].map(majority).astype(str)
    rng = np.random.default_rng(0)
    obs["cellreasoner_confidence"] = np.round(rng.random(adata.n_obs), 3)
    obs["cellreasoner_reasoning"] = [
        f"Markers CD3E and NKG7 point to {lab}; GNLY is weak." for lab in obs["cellreasoner_label"]
    ]
    obs["cellreasoner_response"] = "<think>...</think> " + obs["cellreasoner_label"]
    obs["cellreasoner_cited_present"] = "CD3E, NKG7"
    obs["cellreasoner_cited_absent"] = "GNLY"
    obs["cellreasoner_evidence_fraction"] = 2 / 3
    obs["cellreasoner_evidence_flag"] = rng.random(adata.n_obs) < 0.2
    obs["cellreasoner_ontology_id"] = ""
    obs["cellreasoner_cluster_label"] = obs["cellreasoner_label"]  # hybrid-mode columns
    obs["cellreasoner_cluster_agreement"] = 0.75
    obs["cellreasoner_ontology_label"] = ""
    i = EVIL_CELL
    obs.iloc[i, obs.columns.get_loc("cellreasoner_response")] = EVIL_RESPONSE
    obs.iloc[i, obs.columns.get_loc("cellreasoner_reasoning")] = EVIL_REASONING
    obs.iloc[i, obs.columns.get_loc("cellreasoner_cited_present")] = "CD14, LYZ"
    obs.iloc[i, obs.columns.get_loc("cellreasoner_cited_absent")] = "MS4A1"
    obs.iloc[i, obs.columns.get_loc("cellreasoner_label")] = EVIL_LABEL
    adata.uns["cellreasoner"] = {
        "backend": "transformers", "model": "CellReasoner-7B <test>", "mode": "cell",
        "reasoning": True, "sampling": {"temperature": 0.0, "max_tokens": 1024},
        "n_cells": adata.n_obs, "unique_prompts": adata.n_obs, "model_calls": adata.n_obs,
        "cache_hits": 0, "seconds": 12.5, "version": "0.1.0",
    }
    return adata


@pytest.fixture(scope="module")
def report_data(_pbmc68k_cached):
    return _annotated(_pbmc68k_cached.copy())


@pytest.fixture(scope="module")
def report_path(report_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(report_data, path, truth="bulk_labels", groupby="louvain")
    return path


def test_html_is_self_contained(report_path):
    text = report_path.read_text(encoding="utf-8")
    # exactly the two script blocks of the template; model text cannot close them
    assert text.count("</script>") == 2
    assert "window.__pwned" not in text.split('id="cr-data">')[0]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "<img" in text and 'src="data:image/png;base64,' in text
    # the CSP pins the one executable script by hash
    script = text.split("<script>")[1].split("</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in text
    assert "default-src 'none'" in text
    data = json.loads(text.split('id="cr-data">')[1].split("</script>")[0])
    assert data["n"] == 700 and EVIL_RESPONSE in data["texts"]


def test_json_escaping_round_trips():
    obj = {"t": "</script><!-- & \u2028 \u2029 '\"", "n": [1, None]}
    text = _json_for_script(obj)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == obj


def test_subsample_is_stratified():
    labels = np.array(["a"] * 900 + ["b"] * 95 + ["c"] * 5, dtype=object)
    keep = _subsample(labels, 100, seed=0)
    assert len(keep) <= 100 and len(set(keep)) == len(keep)
    assert set(labels[keep]) == {"a", "b", "c"}
    assert np.array_equal(_subsample(labels[:50], 100, 0), np.arange(50))


def test_report_inputs(report_data, tmp_path):
    with pytest.raises(InputError, match="groupby column 'nope' not found"):
        build_report(report_data, groupby="nope")
    with pytest.raises(InputError, match=r"\.html"):
        write_report(report_data, tmp_path / "r.pdf")
    with pytest.raises(InputError, match="truth column 'nope' not found"):
        build_report(report_data, truth="nope")


def test_cli_report_from_csv(report_data, tmp_path, capsys):
    obs = report_data.obs
    csv = tmp_path / "result.csv"
    pd.DataFrame({
        "cell_name": obs.index, "response": obs["cellreasoner_response"],
        "labels": obs["bulk_labels"].astype(str), "label": obs["cellreasoner_label"],
        "confidence": obs["cellreasoner_confidence"], "reasoning": obs["cellreasoner_reasoning"],
        "cited_present": obs["cellreasoner_cited_present"],
        "cited_absent": obs["cellreasoner_cited_absent"],
    }).to_csv(csv, index=False)
    out = tmp_path / "csv_report.html"
    rc = main(["report", str(csv), "-o", str(out), "--truth", "labels", "--max-cells", "100",
               "--no-plots"])
    assert rc == 0, capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    data = json.loads(text.split('id="cr-data">')[1].split("</script>")[0])
    assert data["n"] == 100 and data["n_total"] == 700
    assert "<img" not in text
    assert main(["report", str(csv), "-o", str(out), "--groupby", "louvain"]) == 2
    assert "groupby column 'louvain' not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI installs Debian chromium")
        pytest.skip(f"{CHROMIUM} is not installed on this machine")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, report_path):
    context = browser.new_context()
    pg = context.new_page()
    pg.requests = []
    pg.errors = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))

    def guard(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", guard)
    pg.goto(report_path.as_uri())
    pg.wait_for_selector("body[data-ready='1']", timeout=10000)
    yield pg
    context.close()


def _visible_rows(pg):
    return pg.locator("#cell-table tbody tr.cell-row")


def _column_texts(pg, cls):
    return pg.locator(f"#cell-table tbody tr.cell-row td.{cls}").all_inner_texts()


def test_page_renders_summary_plots_and_rows(page, report_data):
    assert page.title().startswith("cellreasoner report: CellReasoner-7B <test>")
    summary = page.locator("#summary-table").inner_text()
    assert "transformers" in summary and "700" in summary and "temperature=0.0" in summary
    metrics = page.locator("#metrics-table").inner_text()
    assert "mean hierarchical score" in metrics and "macro-F1" in metrics
    assert page.locator("#plots img").count() == 5  # labels, levels, violin, heatmap, UMAP
    widths = page.eval_on_selector_all("#plots img", "els => els.map(e => e.naturalWidth)")
    assert all(w > 200 for w in widths)
    assert _visible_rows(page).count() == 50
    assert page.locator("#count").inner_text().startswith("700 of 700")
    n_clusters = report_data.obs["louvain"].nunique()
    assert page.locator("#cluster-table tbody tr").count() == n_clusters
    assert page.locator("#per-label tbody tr").count() == report_data.obs["bulk_labels"].nunique()
    # how each truth label was read, and the exact-term accuracy beside the subtype level
    per_label = page.locator("#per-label").inner_text()
    assert "read as" in per_label and "exact CL term" in per_label
    assert "CD14-positive monocyte (CL:0001054)" in per_label
    assert "subtype-level accuracy" in metrics and "exact Cell Ontology term accuracy" in metrics
    assert "truth label 'CD14+ Monocyte' read as" in metrics
    assert page.errors == []


def test_search_and_label_filter(page, report_data):
    obs = report_data.obs
    label = "CD19+ B"
    page.fill("#search", label)
    hay = (obs["cellreasoner_label"].astype(str) + "|" + obs["bulk_labels"].astype(str)).str.lower()
    expected = int(hay.str.contains(label.lower(), regex=False).sum())
    assert page.locator("#count").inner_text().startswith(f"{expected} of 700")
    labels = _column_texts(page, "col-label")
    truths = _column_texts(page, "col-truth")
    assert 0 < len(labels) <= 50
    assert all(label in a or label in b for a, b in zip(labels, truths, strict=True))
    page.fill("#search", "")
    page.select_option("#label-filter", label)
    expected = int((obs["cellreasoner_label"] == label).sum())
    assert page.locator("#count").inner_text().startswith(f"{expected} of 700")
    assert set(_column_texts(page, "col-label")) == {label}
    page.fill("#search", "no such label anywhere")
    assert _visible_rows(page).count() == 0


def test_score_and_level_filters(page, report_path):
    data = json.loads(report_path.read_text().split('id="cr-data">')[1].split("</script>")[0])
    scores = np.array([np.nan if s is None else s for s in data["columns"]["score"]])
    page.fill("#score-max", "0")
    expected = int(np.sum(scores <= 0))
    assert page.locator("#count").inner_text().startswith(f"{expected} of 700")
    assert set(_column_texts(page, "col-score")) <= {"0.00"}
    page.fill("#score-max", "")
    page.fill("#score-min", "1")
    assert page.locator("#count").inner_text().startswith(f"{int(np.sum(scores >= 1))} of 700")
    page.click("#reset")
    levels = data["levels"]
    page.select_option("#level-filter", levels[0])
    n = sum(lv == levels[0] for lv in data["columns"]["level"])
    assert page.locator("#count").inner_text().startswith(f"{n} of 700")
    # pagination moves to other cells
    page.click("#reset")
    first = _column_texts(page, "col-cell")
    page.click("#next")
    assert page.locator("#page-info").inner_text().startswith("page 2 /")
    assert set(_column_texts(page, "col-cell")).isdisjoint(first)


def test_cluster_click_filters_cells(page, report_data):
    row = page.locator("#cluster-table tbody tr").nth(2)
    cluster = row.locator("td").first.inner_text()
    row.click()
    expected = int((report_data.obs["louvain"].astype(str) == cluster).sum())
    assert page.locator("#count").inner_text().startswith(f"{expected} of 700")
    assert set(_column_texts(page, "col-cluster")) == {cluster}
    _visible_rows(page).first.click()
    label = _column_texts(page, "col-label")[0]
    assert f"cluster label: {label} (agreement 0.75)" in page.locator("tr.detail").inner_text()


def test_model_text_is_inert_and_shown_as_text(page, report_data):
    cell = report_data.obs_names[EVIL_CELL]
    page.fill("#search", cell)
    assert _visible_rows(page).count() == 1
    assert page.locator("td.col-label").inner_text() == EVIL_LABEL
    page.locator("td.col-label").hover()
    _visible_rows(page).first.click()
    detail = page.locator("#cell-table tr.detail")
    assert detail.count() == 1
    response = detail.locator(".response").inner_text()
    assert "<script>window.__pwned=1</script>" in response
    assert 'onerror="window.__pwned=2"' in response
    reasoning = detail.locator(".reasoning").inner_text()
    assert "</script><script>window.__pwned=3</script>" in reasoning
    # cited genes are highlighted by evidence, as text nodes
    assert detail.locator("mark.present").all_inner_texts() == ["CD14", "LYZ"]
    assert detail.locator("mark.absent").all_inner_texts() == ["MS4A1"]
    assert page.locator("#cell-table img, #cell-table script, #cell-table b").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.errors == []
    # nothing left the file: no http(s) request was even attempted
    assert page.requests and all(u.startswith(("file:", "data:")) for u in page.requests)


def test_cited_genes_computed_from_expression_when_missing(_pbmc68k_cached):
    adata = _pbmc68k_cached.copy()
    adata.obs["cellreasoner_label"] = "CD14+ Monocyte"
    cited = ["LYZ", "S100A8", "FCGR3A", "MS4A1"]
    assert set(cited) <= set(adata.raw.var_names)
    adata.obs["cellreasoner_reasoning"] = "High LYZ and S100A8 with FCGR3A; MS4A1 is high too."
    data = json.loads(build_report(adata, plots=False).split('id="cr-data">')[1]
                      .split("</script>")[0])
    raw = adata.raw[:, cited].X
    raw = raw.toarray() if hasattr(raw, "toarray") else np.asarray(raw)
    present, absent = data["columns"]["present"], data["columns"]["absent"]
    assert len(present) == adata.n_obs
    n_mixed = 0
    for i in range(adata.n_obs):
        expressed = {g for g, v in zip(cited, raw[i], strict=True) if v > 0}
        assert set(present[i]) == expressed
        assert set(absent[i]) == set(cited) - expressed
        n_mixed += 0 < len(expressed) < len(cited)
    assert n_mixed > 10  # the check really distinguishes cells


def test_minimal_csv_report_in_browser(browser, tmp_path):
    """Only the upstream columns: no truth, clusters, confidence or plots."""
    csv = tmp_path / "upstream.csv"
    labels = ["T cell", "B cell", "NK cell", "T cell", "Monocyte"] * 30
    pd.DataFrame({"cell_name": [f"c{i}" for i in range(150)],
                  "response": [f"<think>x</think>{lab}" for lab in labels],
                  "label": labels}).to_csv(csv, index=False)
    out = write_report(csv, tmp_path / "min.html", plots=False)
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    assert page.title() == "cellreasoner report: upstream"
    assert page.locator("#metrics, #plots, #clusters, #score-min").count() == 0
    assert page.locator("#cell-table thead th").all_inner_texts() == ["cell", "label", "CL term"]
    page.select_option("#label-filter", "T cell")
    assert page.locator("#count").inner_text().startswith("60 of 150")
    assert set(_column_texts(page, "col-label")) == {"T cell"}
    # CL terms were mapped here since the CSV had none
    assert "CL:" in page.locator("td.col-cl").first.inner_text()
    page.locator("tr.cell-row").first.click()
    assert page.locator("tr.detail .response").inner_text() == "<think>x</think>T cell"
    assert errors == []
    page.close()


def test_evidence_flag_filter_and_confidence(page, report_data):
    obs = report_data.obs
    page.check("#flagged-only")
    n_flagged = int(obs["cellreasoner_evidence_flag"].sum())
    assert page.locator("#count").inner_text().startswith(f"{n_flagged} of 700")
    _visible_rows(page).first.click()
    assert "flagged: the reasoning leans on genes" in page.locator("tr.detail").inner_text()
    page.uncheck("#flagged-only")
    page.fill("#conf-min", "0.9")
    expected = int((obs["cellreasoner_confidence"] >= 0.9).sum())
    assert page.locator("#count").inner_text().startswith(f"{expected} of 700")
    assert all(float(c) >= 0.9 for c in _column_texts(page, "col-confidence"))
