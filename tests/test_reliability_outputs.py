"""Nothing lost: outputs are written whole or not at all, under faults and concurrency.

Real files, real subprocesses (two runs writing one output at once, a lock holder killed with
``kill -9``, a file size limit that makes the ``.h5ad`` write fail mid-way).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellreasoner.cli import main
from cellreasoner.errors import OutputError
from cellreasoner.io.write import LOCK_MARK, atomic_path, check_writable, output_lock

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory) -> Path:
    """pbmc68k_reduced's log-normalised ``.raw`` (700 cells x 765 genes), CSR, on disk."""
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced().raw.to_adata()
    a.X = sp.csr_matrix(a.X)
    path = tmp_path_factory.mktemp("data") / "pbmc.h5ad"
    a.write_h5ad(path)
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cellreasoner.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), **kw)


def _leftovers(folder: Path) -> list[str]:
    """Temporary or lock files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.endswith(".lock"))


# --- two runs, one output ----------------------------------------------------------------------

def test_temporary_names_are_unique(tmp_path):
    target = tmp_path / "x.h5ad"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.suffix == b.suffix == ".h5ad"
        a.write_text("first")
        b.write_text("second")
    assert target.read_text() == "first"  # the outer block finished last
    assert _leftovers(tmp_path) == []


def test_two_concurrent_runs_leave_a_valid_output(small_h5ad, tmp_path):
    out = tmp_path / "same.h5ad"
    for _ in range(3):
        procs = [_cli("annotate", small_h5ad, "-o", out, "--no-progress") for _ in range(2)]
        results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
        for rc, err in results:
            assert rc == 0 or (rc == 1 and "another run is writing" in err), err[-2000:]
        assert any(rc == 0 for rc, _ in results)
        written = ad.read_h5ad(out)
        assert written.n_obs == 700 and written.obs["cellreasoner_label"].notna().all()
        assert _leftovers(tmp_path) == []


_HOLDER = """
import sys, time
from cellreasoner.io.write import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_locked_output_is_refused_before_any_work(small_h5ad, tmp_path):
    out = tmp_path / "o.h5ad"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        run = _cli("annotate", small_h5ad, "-o", out, "--no-progress")
        rc, err = run.wait(timeout=60), run.communicate()[1]
        assert rc == 1 and f"another run is writing {out}" in err, err
        assert "unique prompts" not in err  # refused before the model work
        assert not out.exists()
        assert time.perf_counter() - t0 < 30
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the kernel drops the lock
        holder.wait(timeout=10)
    lock = tmp_path / ".o.h5ad.lock"
    assert lock.read_bytes().startswith(LOCK_MARK)  # left behind by the killed holder
    assert main(["annotate", str(small_h5ad), "-o", str(out), "--no-progress"]) == 0
    assert ad.read_h5ad(out).n_obs == 700
    assert _leftovers(tmp_path) == []  # the stale lock (ours: it carries the mark) is gone


def test_a_users_file_named_like_our_lock_is_kept(tmp_path):
    user = tmp_path / ".x.csv.lock"
    user.write_text("mine")
    with output_lock(tmp_path / "x.csv"):
        pass
    assert user.read_text() == "mine"


# --- outputs that collide ----------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["--csv", "{out}"], ["--csv", "{link}"], ["--csv", "{upper}"],
                                   ["--report", "{out_html}", "--csv", "{upper_html}"]])
def test_colliding_outputs_are_refused(small_h5ad, tmp_path, extra):
    out = tmp_path / "x.h5ad"
    (tmp_path / "link.h5ad").symlink_to(out)
    names = {"out": out, "link": tmp_path / "link.h5ad", "upper": tmp_path / "X.H5AD",
             "out_html": tmp_path / "r.html", "upper_html": tmp_path / "R.html"}
    args = [a.format(**names) for a in extra]
    rc = main(["annotate", str(small_h5ad), "-o", str(out), *args, "--no-progress"])
    assert rc == 1
    assert not out.exists() and not (tmp_path / "r.html").exists()


def test_output_onto_the_input_is_refused(small_h5ad, tmp_path, capsys):
    before = small_h5ad.read_bytes()
    hard = tmp_path / "hard.h5ad"
    os.link(small_h5ad, hard)
    for target in (small_h5ad, hard):
        assert main(["annotate", str(small_h5ad), "-o", str(target), "--no-progress"]) == 1
        assert "is the input file" in capsys.readouterr().err
    assert small_h5ad.read_bytes() == before


def test_evaluate_refuses_to_overwrite_its_own_input(tmp_path, capsys):
    import pandas as pd

    res = tmp_path / "out" / "scores.csv"
    res.parent.mkdir()
    pd.DataFrame({"cell_name": ["a", "b"], "response": ["T cell", "B cell"],
                  "labels": ["T cell", "B cell"], "label": ["T cell", "B cell"]}).to_csv(res)
    before = res.read_bytes()
    assert main(["evaluate", str(res), "--truth", "labels", "-o", str(res.parent),
                 "--no-plots"]) == 1
    assert "is the RESULTS #1 file" in capsys.readouterr().err
    assert res.read_bytes() == before


def test_a_users_file_named_like_the_old_temp_name_survives(small_h5ad, tmp_path):
    mine = tmp_path / ".x.tmp.h5ad"
    mine.write_bytes(b"my own file")
    assert main(["annotate", str(small_h5ad), "-o", str(tmp_path / "x.h5ad"),
                 "--no-progress"]) == 0
    assert mine.read_bytes() == b"my own file"


# --- OS errors: one clear line, before the work ------------------------------------------------

def test_folder_in_the_way_and_parent_a_file(small_h5ad, tmp_path, capsys):
    (tmp_path / "x.h5ad").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    for out, why in ((tmp_path / "x.h5ad", "is a folder"),
                     (tmp_path / "afile" / "sub" / "x.h5ad", "is a file, not a folder")):
        assert main(["annotate", str(small_h5ad), "-o", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"cannot write {out}" in err and why in err, err
        assert "unique prompts" not in err
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; needs an unprivileged user")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            check_writable(folder / "x.h5ad")
    finally:
        folder.chmod(0o755)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _disk_full_run(tmp_path: Path, limit: int, *args) -> tuple[int, str]:
    p = _cli(*args, cwd=tmp_path, preexec_fn=_limit_file_size(limit))
    rc = p.wait(timeout=120)
    return rc, p.communicate()[1]


@pytest.mark.parametrize("limit", [1_000_000, 2_100_000])
def test_disk_full_while_writing_h5ad_fails_cleanly(tmp_path, limit):
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"previous output")
    rc, err = _disk_full_run(tmp_path, limit, "annotate", "pbmc68k_reduced", "-o", out,
                             "--no-progress")
    assert rc == 1, err[-3000:]  # not 139 (a segmentation fault inside HDF5)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 3 and "Traceback" not in err and "HDF5" not in err, err[-3000:]
    assert lines[-1].startswith(f"error: cannot write {out}: the file would exceed the file size")
    assert out.read_bytes() == b"previous output"
    assert _leftovers(tmp_path) == []


def test_disk_full_while_writing_the_report_leaves_no_partial_page(tmp_path, small_h5ad):
    annotated = tmp_path / "a.h5ad"
    assert main(["annotate", str(small_h5ad), "-o", str(annotated), "--no-progress"]) == 0
    html = tmp_path / "r.html"
    rc, err = _disk_full_run(tmp_path, 100_000, "report", annotated, "-o", html, "--no-plots")
    assert rc == 1 and f"error: cannot write {html}" in err and "Traceback" not in err, err
    assert not html.exists()
    assert _leftovers(tmp_path) == []


def test_isolated_writer_re_raises_the_childs_exception(tmp_path):
    from cellreasoner.io.write import write_isolated

    def boom():
        raise ValueError("bad uns value")

    with pytest.raises(ValueError, match="bad uns value"):
        write_isolated(boom, tmp_path / "x.h5ad")
    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    write_isolated(lambda: a.write_h5ad(tmp_path / "x.h5ad"), tmp_path / "x.h5ad")
    assert ad.read_h5ad(tmp_path / "x.h5ad").shape == (3, 2)
