"""Training-data builders for the three CellReasoner stages.

* :func:`build_knowledge` — labelled cells -> direct-answer records (stage 2, knowledge
  infusion), with optional Cell Ontology label names, per-label caps/balancing and a held-out
  split by donor/sample (or a stratified split).
* :func:`build_reasoning` — a teacher (any annotation backend: an OpenAI-compatible reasoning
  model such as DeepSeek-R1, or the built-in marker reasoner) writes reasoning traces for
  labelled cells; only traces whose final answer the automatic scorer rates 1 ("Subtype
  correct") are kept (rejection sampling), deduplicated and capped (stage 1, reasoning
  scaffold; the paper used 380 such samples).
* :func:`build_fusion` — direct-answer and reasoning records mixed, each with its own upstream
  instruction, so one model serves both modes (stage 3, reasoning-mode fusion).

Every builder returns records in the upstream/alpaca layout (``cell_name``, ``instruction``,
``input``, ``output``) plus a summary dict; write them with
:func:`cellreasoner.train.records.write_records` (atomic).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import check_obs_column
from ..errors import InputError
from ..prompts import INSTRUCTION_DIRECT, SamplingParams
from . import _teacher
from .records import (
    is_reasoning_record,
    load_records,
    validate_records,
    write_records,
)

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """Records made by a builder.

    Attributes
    ----------
    records
        The training records.
    test
        Held-out records (knowledge builder only; empty otherwise).
    info
        Counts and settings, for logs and provenance.
    """

    records: list[dict]
    test: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def write(self, path: str | os.PathLike, test_path: str | os.PathLike | None = None
              ) -> list[Path]:
        """Write the records (and the held-out ones when ``test_path`` is given), atomically."""
        out = [write_records(self.records, path)]
        if test_path is not None:
            out.append(write_records(self.test, test_path))
        return out


# --- inputs ---------------------------------------------------------------------------------
def _load_adata(data):
    """AnnData, a file path (any format :func:`cellreasoner.io.read` reads) or a demo name."""
    from ..io import load_input

    return load_input(data)[0]


def _labels(adata, label_key: str) -> np.ndarray:
    check_obs_column(adata, label_key)
    col = adata.obs[label_key]
    out = np.empty(len(col), dtype=object)
    for i, v in enumerate(col.tolist()):
        text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        out[i] = text or None
    return out


def _normalise_labels(labels: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """Replace each label by its Cell Ontology name when it maps; returns the mapping used."""
    from ..ontology import map_label

    mapping = {}
    for lab in sorted({x for x in labels if x is not None}):
        m = map_label(lab)
        mapping[lab] = m.label if m.id else lab
    return np.asarray([None if x is None else mapping[x] for x in labels], dtype=object), mapping


# --- splitting and sampling -----------------------------------------------------------------
def _group_split(groups: np.ndarray, keep: np.ndarray, holdout: Sequence[str] | None,
                 test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Test mask: every cell of the held-out groups (given, or drawn to reach ``test_size``)."""
    present = sorted({str(g) for g in groups[keep]})
    if holdout is not None:
        held = [str(h) for h in holdout]
        unknown = [h for h in held if h not in present]
        if unknown:
            raise InputError(f"Held-out group(s) {', '.join(unknown)} not found; the split "
                             f"column holds: {', '.join(present[:20])}.")
    else:
        if len(present) < 2:
            raise InputError(f"The split column has {len(present)} group(s); a held-out split by "
                             "donor/sample needs at least 2 (or give no split_key for a "
                             "stratified split).")
        order = [present[i] for i in rng.permutation(len(present))]
        sizes = Counter(str(g) for g in groups[keep])
        target = test_size * keep.sum()
        held, n = [], 0
        for g in order[:-1]:  # never hold out every group
            if n >= target:
                break
            held.append(g)
            n += sizes[g]
    test = keep & np.isin(groups.astype(str), held)
    return test, held


def _stratified_split(labels: np.ndarray, keep: np.ndarray, test_size: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Test mask: ``round(test_size * n)`` cells of each label (labels with 1 cell: none)."""
    test = np.zeros(len(labels), dtype=bool)
    if test_size <= 0:
        return test
    by_label: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(keep):
        by_label[labels[i]].append(i)
    for idx in by_label.values():
        if len(idx) < 2:
            continue
        n = min(len(idx) - 1, max(1, round(test_size * len(idx))))
        test[rng.choice(idx, size=n, replace=False)] = True
    return test


def _cap(idx_by_label: dict[str, list[int]], max_per_label: int | None, balance: bool,
         rng: np.random.Generator) -> list[int]:
    """Seeded per-label downsampling to ``max_per_label`` (and to the rarest label if balance)."""
    cap = max_per_label
    if balance and idx_by_label:
        smallest = min(len(v) for v in idx_by_label.values())
        cap = smallest if cap is None else min(cap, smallest)
    chosen: list[int] = []
    for lab in sorted(idx_by_label):
        idx = idx_by_label[lab]
        if cap is not None and len(idx) > cap:
            idx = sorted(rng.choice(idx, size=cap, replace=False).tolist())
        chosen.extend(idx)
    return chosen


# --- stage 2: knowledge ---------------------------------------------------------------------
def build_knowledge(
    data,
    label_key: str,
    *,
    gene_list: Sequence[str] | str | os.PathLike | None = None,
    max_genes: int = 1000,
    order: str = "ranked",
    layer: str | None = None,
    use_raw: bool = False,
    normalize_labels: bool = False,
    max_per_label: int | None = None,
    min_per_label: int = 1,
    balance: bool = False,
    split_key: str | None = None,
    holdout: Sequence[str] | None = None,
    test_size: float = 0.1,
    seed: int = 0,
) -> BuildResult:
    """Direct-answer SFT records from labelled cells (knowledge infusion data).

    Parameters
    ----------
    data
        A labelled AnnData, a file :func:`cellreasoner.io.read` reads (``.h5ad``, Seurat
        ``.rds``, ...) or a demo name (``pbmc68k_reduced``).
    label_key
        ``obs`` column with the cell-type labels (cells without a label are left out).
    gene_list, max_genes, order, layer, use_raw
        Cell-sentence settings, as in :func:`cellreasoner.sentences.build_sentences` (defaults:
        the published ranked list, 1000 genes, ranked order, ``X``). Annotation must later use
        the same settings.
    normalize_labels
        Replace labels by their Cell Ontology names where :func:`cellreasoner.ontology.
        map_label` grounds them (default False: keep the data's labels).
    max_per_label
        Keep at most this many training cells per label (seeded draw; default None: all).
    min_per_label
        Leave out labels with fewer training cells than this (default 1).
    balance
        Downsample every label to the rarest one's count (after ``max_per_label``; default
        False).
    split_key
        ``obs`` column of donors/samples. When given, whole groups are held out (``holdout``,
        or groups drawn until ``test_size`` of the cells) so no cell of a held-out donor is
        trained on. Default None: a split stratified by label.
    holdout
        Group names to hold out (needs ``split_key``; default: drawn with ``seed``).
    test_size
        Fraction of cells held out (default 0.1; 0 for none).
    seed
        Seed of every draw (default 0).

    Returns
    -------
    BuildResult
        ``records`` (training, shuffled), ``test`` (held out) and ``info``.
    """
    _check_split_args(test_size, split_key, holdout)
    if isinstance(gene_list, str | os.PathLike):
        from ..resources import load_gene_list

        gene_list = load_gene_list(gene_list)
    adata = _load_adata(data)
    rng = np.random.default_rng(seed)
    labels, mapping, keep = _knowledge_labels(adata, label_key, normalize_labels)
    test_mask, held = _split_cells(adata, labels, keep, split_key, holdout, test_size, rng)
    train_idx, rare = _train_indices(labels, keep & ~test_mask, min_per_label, max_per_label,
                                     balance, rng)
    test_idx = [int(i) for i in np.flatnonzero(test_mask)]

    sentence_kw = {"gene_list": gene_list, "order": order, "max_genes": max_genes,
                   "layer": layer, "use_raw": use_raw}
    train, empty_train = _direct_records(adata, labels, train_idx, sentence_kw)
    test, empty_test = _direct_records(adata, labels, test_idx, sentence_kw)
    if not train:
        raise InputError("Every training cell has an empty sentence (no expressed gene of the "
                         "gene list); check the matrix (layer/use_raw) and gene symbols.")
    train = [train[i] for i in rng.permutation(len(train))]
    info = {
        "builder": "knowledge",
        "label_key": label_key,
        "n_cells": int(adata.n_obs),
        "n_unlabelled": int((~keep).sum()),
        "n_train": len(train),
        "n_test": len(test),
        "n_empty_sentences": empty_train + empty_test,
        "labels_dropped_rare": rare,
        "train_label_counts": dict(Counter(r["output"] for r in train)),
        "split_key": split_key,
        "holdout": held,
        "label_mapping": mapping,
        "max_genes": max_genes,
        "order": order,
        "seed": seed,
    }
    return BuildResult(train, test, info)


def _check_split_args(test_size: float, split_key: str | None,
                      holdout: Sequence[str] | None) -> None:
    if not 0 <= test_size < 1:
        raise InputError(f"test_size must be in [0, 1), not {test_size}.")
    if holdout is not None and split_key is None:
        raise InputError("holdout names groups of a split column; pass split_key too.")


def _knowledge_labels(adata, label_key: str, normalize_labels: bool
                      ) -> tuple[np.ndarray, dict[str, str], np.ndarray]:
    """The cells' labels (Cell Ontology names if asked), the mapping used, the labelled mask."""
    labels = _labels(adata, label_key)
    mapping: dict[str, str] = {}
    if normalize_labels:
        labels, mapping = _normalise_labels(labels)
    keep = np.asarray([lab is not None for lab in labels])
    if not keep.any():
        raise InputError(f"No cell has a label in obs['{label_key}'].")
    return labels, mapping, keep


def _split_cells(adata, labels: np.ndarray, keep: np.ndarray, split_key: str | None,
                 holdout: Sequence[str] | None, test_size: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, list[str]]:
    """Test mask and held-out groups: by donor/sample with ``split_key``, else stratified."""
    if split_key is None:
        return _stratified_split(labels, keep, test_size, rng), []
    check_obs_column(adata, split_key, "Split")
    groups = adata.obs[split_key].astype(str).to_numpy()
    return _group_split(groups, keep, holdout, test_size, rng)


def _train_indices(labels: np.ndarray, train_mask: np.ndarray, min_per_label: int,
                   max_per_label: int | None, balance: bool, rng: np.random.Generator
                   ) -> tuple[list[int], list[str]]:
    """Training cells after the per-label limits, and the labels left out as too rare."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i in np.flatnonzero(train_mask):
        by_label[labels[i]].append(int(i))
    rare = sorted(lab for lab, idx in by_label.items() if len(idx) < min_per_label)
    for lab in rare:
        del by_label[lab]
    train_idx = _cap(by_label, max_per_label, balance, rng)
    if not train_idx:
        raise InputError("No training cell is left after the split and the per-label limits; "
                         "lower min_per_label or test_size.")
    return train_idx, rare


def _direct_records(adata, labels: np.ndarray, idx: list[int], sentence_kw: dict
                    ) -> tuple[list[dict], int]:
    """Direct-answer records of the cells ``idx`` and the number left out as empty sentences."""
    from ..sentences import build_sentences

    if not idx:
        return [], 0
    sents = build_sentences(adata[np.asarray(idx)], **sentence_kw)
    recs, empty = [], 0
    for j, i in enumerate(idx):
        sentence = sents.sentence(j)
        if not sentence:
            empty += 1
            continue
        recs.append({"cell_name": str(adata.obs_names[i]), "instruction": INSTRUCTION_DIRECT,
                     "input": sentence, "output": labels[i]})
    return recs, empty


# --- stage 1: reasoning scaffold ------------------------------------------------------------
def build_reasoning(
    data: str | os.PathLike | Sequence[dict],
    teacher="builtin",
    *,
    teacher_options: dict | None = None,
    sampling: SamplingParams | None = None,
    n_candidates: int | None = None,
    max_records: int | None = 380,
    max_per_label: int | None = None,
    min_score: float = 1.0,
    answer: str = "truth",
    scorer: Callable[[str, str], float] | None = None,
    cache: str | os.PathLike | bool | None = None,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> BuildResult:
    """Reasoning records by rejection sampling from a teacher.

    Parameters
    ----------
    data
        Labelled direct-answer records (from :func:`build_knowledge`, a list or a JSON file):
        the cells to explain and their ground truth.
    teacher
        An annotation backend name (``"builtin"``, ``"openai"`` for any OpenAI-compatible
        server such as DeepSeek-R1, ``"transformers"``, ...) or a ready
        :class:`~cellreasoner.backends.Backend`. Default ``"builtin"``.
    teacher_options
        Options for :func:`cellreasoner.backends.get_backend` (model, base_url, ...).
    sampling
        Default: the upstream reasoning-mode settings (temperature 0.6, top_p 0.4), one trace
        per cell; raise ``n`` for more attempts per cell.
    n_candidates
        Cells sent to the teacher, drawn balanced across labels (default None: all).
    max_records
        Keep at most this many traces, balanced across labels (default 380, as CellCoT).
    max_per_label
        Keep at most this many traces per label (default None).
    min_score
        Keep a trace only when ``scorer(truth, answer) >= min_score`` (default 1.0: subtype
        correct).
    answer
        The answer written after the reasoning: ``"truth"`` (default: the ground-truth label,
        keeping the training vocabulary consistent) or ``"teacher"`` (the teacher's own words).
    scorer
        ``(truth, prediction) -> score``; default :func:`cellreasoner.evaluation.score_pair`.
    cache
        Teacher answers are cached as annotate caches them, so a killed run resumes without
        asking again: a SQLite path, ``None``/``True`` for the default cache
        (``$CELLREASONER_CACHE/annotations.sqlite``), ``False`` for none.
    seed
        Seed of the candidate draw (default 0).
    progress
        Called with the number of cells finished.

    Returns
    -------
    BuildResult
        ``records`` in reasoning mode and ``info`` (counts of generated, rejected, kept).
    """
    from ..backends import get_backend

    if answer not in ("truth", "teacher"):
        raise InputError(f"answer must be 'truth' or 'teacher', not {answer!r}.")
    if scorer is None:
        from ..evaluation import score_pair as scorer
    source = [r for r in load_records(data) if not is_reasoning_record(r)]
    if not source:
        raise InputError("build_reasoning needs labelled direct-answer records (build them with "
                         "build_knowledge); the input holds only reasoning records.")
    candidates = _teacher.draw_candidates(source, n_candidates, seed)
    sampling = sampling or SamplingParams.for_mode(True)
    prompts, slot = _teacher.unique_prompts(candidates)
    backend = get_backend(teacher, **(teacher_options or {}))
    answers, cache_hits = _teacher.ask_teacher(backend, prompts, sampling, cache, progress)
    kept_by_label, counts = _teacher.select_traces(
        candidates, [answers[i] for i in slot], scorer, min_score, answer)
    accepted_counts = {k: len(v) for k, v in sorted(kept_by_label.items())}
    if max_per_label is not None:
        kept_by_label = {k: v[:max_per_label] for k, v in kept_by_label.items()}
    records = _teacher.round_robin(kept_by_label, max_records)
    info = _teacher.reasoning_info(backend, sampling, len(candidates), len(prompts), cache_hits,
                                   counts, min_score, accepted_counts, records)
    if not records:
        log.warning("No teacher trace passed the scorer (%d generated, %d rejected); try more "
                    "attempts (sampling n), another teacher or a lower min_score.",
                    counts["generated"], counts["rejected"])
    return BuildResult(records, [], info)


# --- stage 3: fusion ------------------------------------------------------------------------
def build_fusion(
    direct: str | os.PathLike | Sequence[dict],
    reasoning: str | os.PathLike | Sequence[dict],
    *,
    direct_ratio: float = 1.0,
    mirror: bool = False,
    max_records: int | None = None,
    seed: int = 0,
) -> BuildResult:
    """Mix direct-answer and reasoning records so one model serves both modes.

    Parameters
    ----------
    direct
        Direct-answer records (e.g. the knowledge set); reasoning records in it are ignored.
    reasoning
        Reasoning records (e.g. the scaffold set).
    direct_ratio
        Direct records per reasoning record (default 1.0: an even mix); drawn without
        replacement, so at most all of ``direct``.
    mirror
        Also add the direct-answer version of every reasoning record (same cell, answer only),
        so both modes are seen on the same cells (default False).
    max_records
        Cap on the total, keeping the mix's proportions (default None).
    seed
        Seed of the draw and the shuffle (default 0).

    Returns
    -------
    BuildResult
        Shuffled ``records`` and ``info`` with the counts per mode.
    """
    from ..parsing import split_reasoning

    if direct_ratio < 0:
        raise InputError(f"direct_ratio must be >= 0, not {direct_ratio}.")
    pool = [r for r in load_records(direct) if not is_reasoning_record(r)]
    reas = [r for r in load_records(reasoning) if is_reasoning_record(r)]
    if not reas:
        raise InputError("build_fusion needs reasoning records (reasoning instruction and "
                         "<think> outputs); build them with build_reasoning.")
    rng = np.random.default_rng(seed)
    n_direct = min(len(pool), round(direct_ratio * len(reas)))
    if n_direct == 0 and direct_ratio > 0:
        raise InputError("build_fusion needs direct-answer records; build them with "
                         "build_knowledge.")
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n_direct, replace=False))]
    mirrored = []
    if mirror:
        for r in reas:
            _, ans, _ = split_reasoning(r["output"])
            rec = {k: v for k, v in r.items() if k not in ("instruction", "output")}
            mirrored.append({**rec, "instruction": INSTRUCTION_DIRECT, "output": ans.strip()})
    mix = reas + chosen + mirrored
    if max_records is not None and len(mix) > max_records:
        keep = rng.choice(len(mix), size=max_records, replace=False)
        mix = [mix[i] for i in sorted(keep)]
    mix = [mix[i] for i in rng.permutation(len(mix))]
    validate_records(mix, "fusion records")
    n_reasoning = sum(is_reasoning_record(r) for r in mix)
    info = {
        "builder": "fusion",
        "n_records": len(mix),
        "n_reasoning": n_reasoning,
        "n_direct": len(mix) - n_reasoning,
        "n_mirrored": len(mirrored),
        "direct_ratio": direct_ratio,
        "seed": seed,
    }
    return BuildResult(mix, [], info)
