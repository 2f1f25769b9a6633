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

#: Deprecated summary columns -> the column they alias. ``exact_accuracy`` was the fraction at
#: score 1, which counts a sibling subtype (naive CD8 called effector memory CD8) as exact; it
#: is now ``subtype_accuracy``, beside ``exact_cl_accuracy`` (the same CL term). The alias stays in
#: :attr:`EvaluationResult.summary` for old scripts; it is not written, printed or reported.
DEPRECATED_SUMMARY_ALIASES: dict[str, str] = {"exact_accuracy": "subtype_accuracy"}

#: Summary columns shown by ``repr``, ``cellreasoner evaluate`` and the report, in this order.
SHOWN_SUMMARY_COLUMNS = ("run", "n_cells", "mean_score", "subtype_accuracy", "exact_cl_accuracy",
                         "major_accuracy", "macro_f1_cl", "macro_f1_cl_hierarchical")


@dataclass
class EvaluationResult:
    """Metrics of one or more runs.

    Attributes
    ----------
    summary
        One row per run: ``run``, ``model``, ``backend``, ``source``, ``pred_column``,
        ``n_cells``, ``mean_score``, ``subtype_accuracy`` (score 1: the right subtype *level*,
        which counts a sibling subtype such as effector memory for naive CD8 T cell),
        ``exact_cl_accuracy`` (the predicted CL term is the truth's term), ``major_accuracy``
        (score >= 0.5), ``macro_f1_cl`` (exact CL terms), ``macro_f1_cl_hierarchical`` (a
        prediction at or below the truth's CL term counts as it; see :func:`collapse_to_truth`)
        and the fraction of cells at each level
        (``subtype_correct``, ``major_correct``, ``partially_correct``, ``incorrect``).
        ``exact_accuracy`` is a deprecated alias of ``subtype_accuracy``
        (:data:`DEPRECATED_SUMMARY_ALIASES`), kept in memory only.
    per_label
        One row per (run, truth label): ``n``, ``mean_score``, ``exact_cl_accuracy``, level
        fractions, ``top_prediction`` and ``top_prediction_fraction``.
    per_cell
        Long table, one row per (run, cell): ``cell``, ``run``, ``truth``, ``prediction``,
        ``score``, ``level``, ``truth_cl``, ``pred_cl``, ``exact_cl`` (the two ids are the
        same term) and ``confidence`` when the run has it.
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
        cols = list(SHOWN_SUMMARY_COLUMNS)
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

        summary = self.summary.drop(columns=list(DEPRECATED_SUMMARY_ALIASES), errors="ignore")
        tables = (summary, self.per_label, self.per_cell, self.truth_readings)
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
