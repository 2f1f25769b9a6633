"""Plots written to PNG/PDF from real data (pbmc68k_reduced, which has a UMAP)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from cellreasoner import plot
from cellreasoner.errors import InputError
from cellreasoner.evaluation import evaluate, score_adata


@pytest.fixture
def annotated(pbmc68k):
    majority = pbmc68k.obs.groupby("louvain", observed=True)["bulk_labels"].agg(
        lambda s: s.value_counts().index[0]
    )
    pbmc68k.obs["cellreasoner_label"] = pbmc68k.obs["louvain"].map(majority).astype(str)
    pbmc68k.obs["always_t"] = "CD4+/CD25 T Reg"
    return pbmc68k


@pytest.fixture
def result(annotated):
    return evaluate(annotated, truth="bulk_labels", pred=["cellreasoner_label", "always_t"])


def _check_png(path, min_w=200, min_h=150):
    assert path.is_file() and path.stat().st_size > 2000
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    assert w < 6000 and h < 6000, (w, h)
    # not a blank canvas
    assert float(np.std(img[..., :3])) > 0.01
    return w, h


def _check_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 1000


def test_score_violin_and_level_bar(result, tmp_path):
    for fn in (plot.score_violin, plot.level_bar):
        fig = fn(result, save=tmp_path / f"{fn.__name__}.png")
        _check_png(tmp_path / f"{fn.__name__}.png")
        fn(result, save=tmp_path / f"{fn.__name__}.pdf")
        _check_pdf(tmp_path / f"{fn.__name__}.pdf")
        assert fig.axes[0].get_xticklabels()[1].get_text() == "always_t"
    # the mean marker of the violin sits at the run's mean score
    fig = plot.score_violin(result)
    offsets = fig.axes[0].collections[-1].get_offsets()
    np.testing.assert_allclose(offsets[:, 1], result.summary["mean_score"].to_numpy())


def test_label_heatmap_from_result_and_anndata(result, annotated, tmp_path):
    plot.label_heatmap(result, run="cellreasoner_label", save=tmp_path / "h.png")
    w, h = _check_png(tmp_path / "h.png")
    plot.label_heatmap(annotated, truth_key="bulk_labels", save=tmp_path / "h2.pdf")
    _check_pdf(tmp_path / "h2.pdf")
    with pytest.raises(InputError, match="run 'nope' not in the results"):
        plot.label_heatmap(result, run="nope")
    with pytest.raises(InputError, match="'missing' not found"):
        plot.label_heatmap(annotated, truth_key="missing")


def test_crosstab_is_row_normalised(annotated):
    table = plot.crosstab(annotated.obs["bulk_labels"], annotated.obs["cellreasoner_label"])
    np.testing.assert_allclose(table.sum(axis=1).to_numpy(), 1.0)
    assert set(table.index) == set(annotated.obs["bulk_labels"].astype(str))
    pooled = plot.crosstab(annotated.obs["bulk_labels"], annotated.obs["bulk_labels"],
                           max_predictions=3)
    assert "(other)" in pooled.columns and pooled.shape[1] == 4


def test_umap_by_prediction_and_score(annotated, tmp_path):
    # score computed on the fly from truth, adata untouched
    plot.umap(annotated, truth_key="bulk_labels", save=tmp_path / "u.png")
    assert "cellreasoner_score" not in annotated.obs
    w, h = _check_png(tmp_path / "u.png", min_w=600)
    assert w > h  # two panels side by side
    score_adata(annotated, "bulk_labels")
    fig = plot.umap(annotated, save=tmp_path / "u.pdf")
    _check_pdf(tmp_path / "u.pdf")
    assert len(fig.axes) == 3  # prediction, score, colorbar
    only_pred = plot.umap(annotated, score_key="absent")
    assert len(only_pred.axes) == 1
    del annotated.obsm["X_umap"]
    with pytest.raises(InputError, match="X_umap"):
        plot.umap(annotated)


def test_labels_with_dollar_signs_and_bad_suffix(annotated, tmp_path):
    labels = annotated.obs["cellreasoner_label"].to_numpy().copy()
    labels[:50] = "$\\frac{CD4$ T cell"
    plot.label_counts(labels, save=tmp_path / "c.png")
    _check_png(tmp_path / "c.png")
    with pytest.raises(InputError, match="unsupported figure format"):
        plot.label_counts(labels, save=tmp_path / "c.jpeg2")
