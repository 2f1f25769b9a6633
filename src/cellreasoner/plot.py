"""Plots of evaluation results and annotations (scanpy-like ``pl`` functions).

Every function takes ``show=False`` and ``save=None``: with ``save`` a path, the figure is written
there (format from the suffix: ``.png``, ``.pdf``, ``.svg``). Figures are built without pyplot
(Agg canvas) unless ``show=True``, so nothing accumulates in notebooks or servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .evaluation.metrics import LEVELS

#: Colour of each score level, from best to worst.
LEVEL_COLORS = {
    1.0: "#1a9850",
    0.5: "#91cf60",
    0.25: "#fdae61",
    0.0: "#d73027",
}

_SAVE_FORMATS = (".png", ".pdf", ".svg")


def _mpl_text(text: Any, max_len: int = 48) -> str:
    """Label text safe for matplotlib: ``$`` escaped (it starts mathtext), long text shortened."""
    text = str(text)
    if len(text) > max_len:
        text = text[: max_len - 1] + "\u2026"
    return text.replace("$", r"\$")


def _new_figure(figsize: tuple[float, float], show: bool, ax: Any = None):
    """A figure and axes: the given ``ax``, a pyplot figure (``show``) or a bare Agg figure."""
    if ax is not None:
        return ax.figure, ax
    if show:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=figsize)
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Any, show: bool, save: str | Path | None, dpi: int = 150):
    """Save and/or show; return the figure unless it was shown."""
    if save is not None:
        path = Path(save)
        if path.suffix.lower() not in _SAVE_FORMATS:
            raise InputError(
                f"save={path}: unsupported figure format '{path.suffix}'; use one of "
                f"{', '.join(_SAVE_FORMATS)}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
        return None
    return fig


def _per_cell(result: Any) -> pd.DataFrame:
    """The long per-cell table of an EvaluationResult (or such a DataFrame itself)."""
    from .evaluation import EvaluationResult

    if isinstance(result, EvaluationResult):
        return result.per_cell
    if isinstance(result, pd.DataFrame):
        missing = {"run", "score"} - set(result.columns)
        if missing:
            raise InputError(
                f"per-cell table lacks column(s) {sorted(missing)}; pass an EvaluationResult "
                "or its .per_cell table"
            )
        return result
    raise InputError(
        f"expected an EvaluationResult or its .per_cell DataFrame, got {type(result).__name__}"
    )


def score_violin(
    result: Any,
    *,
    show: bool = False,
    save: str | Path | None = None,
    ax: Any = None,
):
    """Violin of per-cell hierarchical scores per run, with the mean marked.

    Parameters
    ----------
    result
        :class:`~cellreasoner.evaluation.EvaluationResult` or its ``per_cell`` table.
    show
        Display with pyplot (default ``False``).
    save
        Write the figure to this path (default ``None``).
    ax
        Draw into existing axes (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    import seaborn as sns

    df = _per_cell(result)[["run", "score"]].copy()
    df["run"] = df["run"].map(_mpl_text)
    runs = list(dict.fromkeys(df["run"]))
    fig, ax = _new_figure((1.6 + 1.3 * len(runs), 4.0), show, ax)
    sns.violinplot(
        data=df, x="run", y="score", order=runs, cut=0, inner="quartile",
        color="#9ecae1", density_norm="width", ax=ax,
    )
    means = df.groupby("run", sort=False)["score"].mean().reindex(runs)
    ax.scatter(range(len(runs)), means.to_numpy(), marker="D", s=50, color="black", zorder=5,
               label="mean")
    for i, m in enumerate(means):
        ax.annotate(f"{m:.3f}", (i, m), xytext=(8, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_ylim(-0.05, 1.08)
    ax.set_yticks([0, 0.25, 0.5, 1.0])
    ax.set_xlabel("")
    ax.set_ylabel("hierarchical score")
    ax.set_title("Annotation score per cell")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if len(runs) > 3:
        ax.tick_params(axis="x", labelrotation=30)
    return _finish(fig, show, save)


def level_bar(
    result: Any,
    *,
    show: bool = False,
    save: str | Path | None = None,
    ax: Any = None,
):
    """Stacked bar of the four score levels per run, with the mean score as a line.

    Parameters
    ----------
    result
        :class:`~cellreasoner.evaluation.EvaluationResult` or its ``per_cell`` table.
    show, save, ax
        As in :func:`score_violin`.

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    df = _per_cell(result)
    runs = list(dict.fromkeys(df["run"]))
    fig, ax = _new_figure((2.4 + 1.1 * len(runs), 4.0), show, ax)
    x = np.arange(len(runs))
    bottom = np.zeros(len(runs))
    for value in sorted(LEVEL_COLORS, reverse=True):
        frac = np.array([
            np.mean(np.isclose(df.loc[df["run"] == r, "score"].to_numpy(float), value))
            for r in runs
        ])
        ax.bar(x, frac, bottom=bottom, color=LEVEL_COLORS[value], width=0.7,
               label=LEVELS.get(value, str(value)), edgecolor="white", linewidth=0.5)
        bottom += frac
    means = df.groupby("run", sort=False)["score"].mean().reindex(runs).to_numpy()
    ax.hlines(means, x - 0.35, x + 0.35, colors="black", linewidth=2.2, label="mean score")
    for xi, m in zip(x, means, strict=True):
        ax.text(xi, m + 0.015, f"{m:.2f}", ha="center", va="bottom", fontsize=8,
                color="black", fontweight="bold")
    ax.set_xticks(x, [_mpl_text(r) for r in runs], rotation=30 if len(runs) > 3 else 0)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("fraction of cells")
    ax.set_title("Score levels")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return _finish(fig, show, save)


def crosstab(truth: Sequence[Any], pred: Sequence[Any], max_predictions: int = 30) -> pd.DataFrame:
    """Row-normalised truth x prediction table.

    Prediction columns beyond the ``max_predictions`` most frequent (default 30) are pooled into
    ``"(other)"``.
    """
    t = pd.Series(np.asarray(truth, dtype=object), name="truth").fillna("").astype(str)
    p = pd.Series(np.asarray(pred, dtype=object), name="prediction").fillna("").astype(str)
    top = p.value_counts().index[:max_predictions]
    p = p.where(p.isin(top), "(other)")
    table = pd.crosstab(t, p, normalize="index")
    # order columns: the truth labels first (diagonal), then the rest by frequency
    cols = [c for c in table.index if c in table.columns]
    cols += [c for c in p.value_counts().index if c not in cols and c in table.columns]
    return table[cols]


def label_heatmap(
    data: Any,
    *,
    run: str | None = None,
    truth_key: str | None = None,
    pred_key: str = "cellreasoner_label",
    max_predictions: int = 30,
    show: bool = False,
    save: str | Path | None = None,
    ax: Any = None,
):
    """Row-normalised heatmap of truth labels (rows) x predicted labels (columns).

    Parameters
    ----------
    data
        An EvaluationResult / per-cell table (then ``run`` picks the run; default the first), or
        an AnnData with ``truth_key`` and ``pred_key`` columns in ``obs``.
    run
        Run to draw (default: the first).
    truth_key, pred_key
        Columns when ``data`` is an AnnData (``pred_key`` default ``"cellreasoner_label"``).
    max_predictions
        Most frequent predictions shown; the rest pooled as ``"(other)"`` (default 30).
    show, save, ax
        As in :func:`score_violin`.

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    import anndata
    import seaborn as sns

    if isinstance(data, anndata.AnnData):
        for key in (truth_key, pred_key):
            if key is None or key not in data.obs.columns:
                raise InputError(
                    f"label_heatmap needs truth_key and pred_key columns of adata.obs; "
                    f"'{key}' not found (available: {', '.join(map(str, data.obs.columns))})"
                )
        truth, pred, title = data.obs[truth_key], data.obs[pred_key], pred_key
    else:
        df = _per_cell(data)
        runs = list(dict.fromkeys(df["run"]))
        run = runs[0] if run is None else run
        if run not in runs:
            raise InputError(f"run '{run}' not in the results; runs: {', '.join(runs)}")
        sub = df[df["run"] == run]
        truth, pred, title = sub["truth"], sub["prediction"], run
    table = crosstab(truth, pred, max_predictions=max_predictions)
    table.index = [_mpl_text(x) for x in table.index]
    table.columns = [_mpl_text(x) for x in table.columns]
    width = 3.0 + 0.42 * table.shape[1]
    height = 2.0 + 0.36 * table.shape[0]
    fig, ax = _new_figure((min(width, 30.0), min(height, 30.0)), show, ax)
    sns.heatmap(
        table, ax=ax, cmap="Blues", vmin=0, vmax=1, linewidths=0.3, linecolor="#eeeeee",
        annot=table.size <= 400, fmt=".2f", annot_kws={"fontsize": 7},
        cbar_kws={"label": "fraction of truth label"},
    )
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Cross-label table: {_mpl_text(title)}")
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
    ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    return _finish(fig, show, save)


def _categorical_scatter(ax: Any, coords: np.ndarray, labels: np.ndarray, title: str) -> None:
    import matplotlib as mpl

    labels = np.asarray(labels, dtype=object)
    cats = pd.Series(labels).value_counts().index.tolist()
    cmap = mpl.colormaps["tab20"] if len(cats) > 10 else mpl.colormaps["tab10"]
    size = max(2.0, min(30.0, 12000 / max(len(coords), 1)))
    for i, cat in enumerate(cats):
        m = labels == cat
        ax.scatter(coords[m, 0], coords[m, 1], s=size, color=cmap(i % cmap.N), label=_mpl_text(cat),
                   linewidths=0, rasterized=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=7,
              markerscale=max(1.0, 12 / size), ncol=1 if len(cats) <= 20 else 2)
    ax.set_title(title)


def _umap_axes_style(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1")
    ax.set_ylabel("UMAP2")


def umap_figure(
    coords: np.ndarray,
    pred: Sequence[Any],
    score: Sequence[float] | None = None,
    pred_title: str = "prediction",
    show: bool = False,
):
    """UMAP panels from raw arrays: categorical prediction and (optionally) score."""
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise InputError("UMAP coordinates must be an (n_cells, 2) array (obsm['X_umap'])")
    n_panels = 1 if score is None else 2
    if show:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(6.5 * n_panels, 4.8))
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5 * n_panels, 4.8))
    ax1 = fig.add_subplot(1, n_panels, 1)
    _categorical_scatter(ax1, coords, np.asarray(pred, dtype=object), _mpl_text(pred_title))
    _umap_axes_style(ax1)
    if score is not None:
        ax2 = fig.add_subplot(1, n_panels, 2)
        s = np.asarray(score, dtype=float)
        size = max(2.0, min(30.0, 12000 / max(len(coords), 1)))
        order = np.argsort(np.nan_to_num(s, nan=-1.0))
        sc = ax2.scatter(coords[order, 0], coords[order, 1], c=s[order], cmap="RdYlGn",
                         vmin=0, vmax=1, s=size, linewidths=0, rasterized=True)
        fig.colorbar(sc, ax=ax2, label="hierarchical score", shrink=0.8)
        ax2.set_title("score")
        _umap_axes_style(ax2)
    fig.tight_layout()
    return fig


def umap(
    adata: Any,
    *,
    pred_key: str = "cellreasoner_label",
    score_key: str = "cellreasoner_score",
    truth_key: str | None = None,
    pair_table: Any = None,
    show: bool = False,
    save: str | Path | None = None,
):
    """UMAP coloured by prediction and by hierarchical score.

    Parameters
    ----------
    adata
        AnnData with ``obsm["X_umap"]``.
    pred_key
        Prediction column (default ``"cellreasoner_label"``).
    score_key
        Score column written by :func:`cellreasoner.evaluation.score_adata`
        (default ``"cellreasoner_score"``). When absent and ``truth_key`` is given, scores are
        computed on the fly (``adata`` is not modified); otherwise only the prediction is shown.
    truth_key
        Ground-truth column used to compute scores when ``score_key`` is absent (default ``None``).
    pair_table
        Judged pairs for that on-the-fly scoring (default ``None``).
    show, save
        As in :func:`score_violin`.

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    if "X_umap" not in adata.obsm:
        raise InputError(
            "adata.obsm['X_umap'] is missing; compute it first (scanpy: sc.pp.neighbors(adata); "
            "sc.tl.umap(adata))"
        )
    if pred_key not in adata.obs.columns:
        raise InputError(
            f"prediction column '{pred_key}' not in adata.obs; available columns: "
            f"{', '.join(map(str, adata.obs.columns))}"
        )
    score = None
    if score_key in adata.obs.columns:
        score = adata.obs[score_key].to_numpy(dtype=float)
    elif truth_key is not None:
        from .evaluation import score_adata

        tmp = adata.obs[[c for c in (truth_key, pred_key) if c in adata.obs.columns]]
        import anndata

        light = anndata.AnnData(obs=tmp.copy())
        score_adata(light, truth_key, pred_key=pred_key, key_added="score", pair_table=pair_table)
        score = light.obs["score"].to_numpy(dtype=float)
    fig = umap_figure(np.asarray(adata.obsm["X_umap"]), adata.obs[pred_key].astype(str),
                      score, pred_title=pred_key, show=show)
    return _finish(fig, show, save)


def label_counts(
    labels: Sequence[Any],
    *,
    max_labels: int = 30,
    title: str = "Predicted labels",
    show: bool = False,
    save: str | Path | None = None,
    ax: Any = None,
):
    """Horizontal bar chart of how many cells received each label.

    Parameters
    ----------
    labels
        One label per cell.
    max_labels
        Most frequent labels shown; the rest pooled as ``"(other)"`` (default 30).
    title
        Axes title (default ``"Predicted labels"``).
    show, save, ax
        As in :func:`score_violin`.

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    s = pd.Series(np.asarray(labels, dtype=object)).fillna("").astype(str)
    counts = s.value_counts()
    if len(counts) > max_labels:
        other = counts.iloc[max_labels:].sum()
        counts = pd.concat([counts.iloc[:max_labels], pd.Series({"(other)": other})])
    fig, ax = _new_figure((6.0, 1.0 + 0.28 * len(counts)), show, ax)
    y = np.arange(len(counts))[::-1]
    ax.barh(y, counts.to_numpy(), color="#4e79a7")
    ax.set_yticks(y, [_mpl_text(c) if c else "(empty)" for c in counts.index], fontsize=8)
    for yi, n in zip(y, counts.to_numpy(), strict=True):
        ax.text(n, yi, f" {n}", va="center", fontsize=7)
    ax.set_xlabel("cells")
    ax.set_title(_mpl_text(title))
    ax.margins(x=0.12)
    return _finish(fig, show, save)
