"""The result of :func:`cellreasoner.evaluation.evaluate`: tables, notes, and writing them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._spreadsheet import write_spreadsheet_csv

#: The tables :meth:`EvaluationResult.to_dir` writes, in this order: summary, per label,
#: per cell, truth readings (the CLI claims these names before it evaluates).
TABLE_FILES = ("metrics.csv", "per_label.csv", "scores.csv", "truth_readings.csv")


@dataclass
class EvaluationResult:
    """Metrics of one or more runs.

    Attributes
    ----------
    summary
        One row per run: ``run``, ``model``, ``backend``, ``source``, ``pred_column``,
        ``n_cells``, ``mean_score``, ``exact_accuracy`` (score 1), ``major_accuracy``
        (score >= 0.5), ``macro_f1_cl`` (exact CL terms), ``macro_f1_cl_hierarchical`` (a
        prediction at or below the truth's CL term counts as it; see :func:`collapse_to_truth`)
        and the fraction of cells at each level
        (``subtype_correct``, ``major_correct``, ``partially_correct``, ``incorrect``).
    per_label
        One row per (run, truth label): ``n``, ``mean_score``, level fractions,
        ``top_prediction`` and ``top_prediction_fraction``.
    per_cell
        Long table, one row per (run, cell): ``cell``, ``run``, ``truth``, ``prediction``,
        ``score``, ``level``, ``truth_cl``, ``pred_cl`` (and ``confidence`` when the run has it).
    truth
        Name of the ground-truth column.
    notes
        Human-readable remarks (dropped cells, cells without truth).
    provenance
        Run name -> provenance dict from ``uns`` (``{}`` when unknown).
    umap
        Run name -> UMAP coordinates of its scored cells, in ``per_cell`` order (only runs whose
        source has ``obsm["X_umap"]``).
    truth_readings
        How each truth label was read: ``truth``, ``cl_id``, ``cl_label``, ``source``
        (``"truth map"``, ``"ontology"``, ``"unmapped"``).
    """

    summary: pd.DataFrame
    per_label: pd.DataFrame
    per_cell: pd.DataFrame
    truth: str
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    umap: dict[str, np.ndarray] = field(default_factory=dict)
    truth_readings: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __repr__(self) -> str:
        cols = ["run", "n_cells", "mean_score", "exact_accuracy", "major_accuracy", "macro_f1_cl",
                "macro_f1_cl_hierarchical"]
        return (f"EvaluationResult(truth={self.truth!r}, runs={len(self.summary)})\n"
                + self.summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))

    @property
    def runs(self) -> list[str]:
        """Run names, in input order."""
        return self.summary["run"].tolist()

    def to_dir(self, path: str | Path, plots: bool = True, fmt: str = "png") -> Path:
        """Write ``metrics.csv``, ``per_label.csv``, ``scores.csv``, ``truth_readings.csv``
        and (default) plots.

        Parameters
        ----------
        path
            Output folder (created if needed).
        plots
            Also write ``score_violin``, ``score_levels``, one ``heatmap_<run>`` figure and,
            for runs with a UMAP, ``umap_<run>`` (default ``True``).
        fmt
            Figure format, ``"png"`` (default), ``"pdf"`` or ``"svg"``.

        Returns
        -------
        Path
            The output folder.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        from ..io.write import atomic_path

        tables = (self.summary, self.per_label, self.per_cell, self.truth_readings)
        for table, name in zip(tables, TABLE_FILES, strict=True):
            with atomic_path(out / name) as tmp:  # formulas in names escaped
                write_spreadsheet_csv(table, tmp, index=False)
        if plots:
            from .. import plot

            figs = [
                (plot.score_violin(self), "score_violin"),
                (plot.level_bar(self), "score_levels"),
            ]
            for run in self.runs:
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run)
                figs.append((plot.label_heatmap(self, run=run), f"heatmap_{safe}"))
                if run in self.umap:
                    sub = self.per_cell[self.per_cell["run"] == run]
                    figs.append((plot.umap_figure(self.umap[run], sub["prediction"],
                                                  sub["score"], pred_title=run), f"umap_{safe}"))
            for fig, stem in figs:
                with atomic_path(out / f"{stem}.{fmt}") as tmp:
                    fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=120)
        return out
