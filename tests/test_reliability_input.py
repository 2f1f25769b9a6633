"""Nothing lost on bad input: every stored value checked as it streams, no empty outputs,
float16 matrices and non-UTF-8 file names handled. Real files, real CLI runs."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cellreasoner.cli import main
from cellreasoner.errors import InputError
from cellreasoner.matrix import from_anndata, from_h5ad

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def big_sparse(tmp_path_factory) -> Path:
    """1,500 cells x 18,000 genes: validation's sampling sees only ~100 of these cells."""
    return synthetic.write_h5ad(tmp_path_factory.mktemp("big") / "big.h5ad", 1500, nnz=200)


def _poison(src: Path, dst: Path, cell: int, value: float) -> Path:
    """A copy of ``src`` with one stored value of ``cell`` replaced by ``value``."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        f["X/data"][int(f["X/indptr"][cell]) + 3] = value
    return dst


@pytest.mark.parametrize("value,what", [(np.nan, "NaN or infinite"), (-2.0, "negative")])
def test_a_bad_value_deep_in_a_sparse_matrix_is_refused(big_sparse, tmp_path, capsys, value,
                                                         what):
    bad = _poison(big_sparse, tmp_path / "bad.h5ad", 1001, value)
    out = tmp_path / "o.h5ad"
    assert main(["annotate", str(bad), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert what in err and "cell 'cell1001' (row 1001)" in err and str(bad) in err, err
    assert not out.exists()
    # prepare reads the same chunks and so refuses the same way
    assert main(["prepare", str(bad), "-o", str(tmp_path / "p.json"), "--order",
                 "expression"]) == 2
    assert "cell 'cell1001'" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_every_chunk_consumer_sees_checked_values(pbmc68k):
    a = pbmc68k.raw.to_adata()
    a.X = sp.csr_matrix(a.X)
    a.X.data[-1] = np.inf
    source = from_anndata(a)
    with pytest.raises(InputError, match=f"cell '{a.obs_names[-1]}'"):
        list(source.iter_chunks(100))
    with pytest.raises(InputError, match="NaN or infinite"):
        source.to_csr()


def test_no_cells_is_refused(pbmc68k, tmp_path, capsys):
    empty = tmp_path / "empty.h5ad"
    pbmc68k.raw.to_adata()[:0].copy().write_h5ad(empty)
    for cmd, out in (("prepare", "p.json"), ("annotate", "a.h5ad")):
        extra = ["--order", "expression"] if cmd == "prepare" else ["--no-progress"]
        assert main([cmd, str(empty), "-o", str(tmp_path / out), *extra]) == 2
        assert "has no cells" in capsys.readouterr().err
        assert not (tmp_path / out).exists()


def test_float16_matrices_are_read_as_float32(pbmc68k, tmp_path):
    a = pbmc68k.raw.to_adata()
    a.X = sp.csr_matrix(a.X)
    a.X.data = a.X.data.astype(np.float16).astype(np.float32)  # float16-exact values
    ref = tmp_path / "f32.h5ad"
    a.write_h5ad(ref)
    sparse16 = tmp_path / "f16.h5ad"
    shutil.copyfile(ref, sparse16)
    with h5py.File(sparse16, "r+") as f:  # anndata cannot write float16 CSR; HDF5 can
        data = f["X/data"][()].astype(np.float16)
        del f["X/data"]
        f["X/data"] = data
    dense16 = a.copy()
    dense16.X = a.X.toarray().astype(np.float16)
    chunk = next(from_h5ad(sparse16).iter_chunks())
    assert chunk.dtype == np.float32 and (chunk != a.X).nnz == 0
    assert next(from_anndata(dense16).iter_chunks()).dtype == np.float32
    outs = {}
    for name, data in (("ref", ref), ("sparse16", sparse16)):
        outs[name] = tmp_path / f"{name}.json"
        assert main(["prepare", str(data), "-o", str(outs[name]), "--order", "expression"]) == 0
    assert json.loads(outs["ref"].read_text()) == json.loads(outs["sparse16"].read_text())
    assert main(["annotate", str(sparse16), "-o", str(tmp_path / "a.h5ad"),
                 "--no-progress"]) == 0
    with h5py.File(tmp_path / "a.h5ad") as f:  # X is kept as it was: float16 (anndata
        obs = ad.io.read_elem(f["obs"])         # reads such a file backed only)
    assert obs["cellreasoner_label"].notna().all() and len(obs) == a.n_obs
    import cellreasoner as cr

    res = cr.annotate(dense16, "builtin", cache=False, progress=False)
    assert len(res.table) == a.n_obs


@pytest.mark.skipif(sys.platform != "linux", reason="byte file names are a Linux case")
def test_non_utf8_file_names(pbmc68k, tmp_path, capsys):
    a = pbmc68k.raw.to_adata()
    a.X = sp.csr_matrix(a.X)
    name = os.fsdecode(b"\xffpbmc.h5ad")  # how Python hands such a CLI argument over
    a.write_h5ad(tmp_path / "plain.h5ad")
    os.rename(tmp_path / "plain.h5ad", tmp_path / name)
    out = tmp_path / "o.h5ad"
    # an input named so works end to end (the name is recorded with a \xff escape)
    assert main(["annotate", str(tmp_path / name), "-o", str(out), "--no-progress"]) == 0
    assert ad.read_h5ad(out).uns["cellreasoner"]["input"].endswith("\\xffpbmc.h5ad")
    capsys.readouterr()
    # an output named so is refused before any work
    bad_out = tmp_path / os.fsdecode(b"o\xff.h5ad")
    assert main(["annotate", str(tmp_path / name), "-o", str(bad_out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "unique prompts" not in err
    assert not bad_out.exists()
