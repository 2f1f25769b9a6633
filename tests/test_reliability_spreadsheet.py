"""Reliability and security: CSV formula injection (OWASP), through the real CLI.

Text cells starting with ``= + - @`` tab or CR are prefixed with ``'`` in the CSVs meant for
spreadsheets (annotate's table, evaluate's metrics/per_label/scores), numbers stay numbers, and
evaluate reads an escaped annotate CSV back exactly as annotate had it. The chat server and
the CLI helpers are those of ``test_reliability_security.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from security_support import Chat, annotate_openai, cli, env_for, running_chat_server


@pytest.fixture
def chat_server():
    with running_chat_server() as port:
        yield port

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

    Chat.answer = "-T cell"  # the server's answer starts a formula too
    env = env_for(tmp_path / "cache")
    r = annotate_openai(chat_server, evil_h5ad, tmp_path / "out.h5ad", env, "--csv",
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
    r = cli(["evaluate", str(tmp_path / "out.csv"), "--truth", "labels", "-o", str(outdir),
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
