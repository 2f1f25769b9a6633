"""An LLM judge of (truth, prediction) pairs, with its answers cached in memory and SQLite."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._sqlite import connect, transaction
from ..errors import BackendError, InputError
from .metrics import LEVEL_BY_NAME, LEVELS

if TYPE_CHECKING:
    from ..backends import Backend
    from ..prompts import Prompt, SamplingParams

JUDGE_INSTRUCTION = (
    "You evaluate cell-type annotations. Compare the model prediction with the ground-truth "
    "cell type and answer with exactly one of: 'Subtype correct' (same cell type or subtype), "
    "'Major correct' (same major cell type, different subtype, or a broader correct term), "
    "'Partially correct' (hedged answer or related lineage), 'Incorrect'."
)

_SCHEMA = ("CREATE TABLE IF NOT EXISTS judgments (model TEXT, truth TEXT, prediction TEXT, "
           "score REAL, raw TEXT, PRIMARY KEY (model, truth, prediction))")


def parse_judgment(text: str) -> float | None:
    """The level named in a judge's answer (a level name or a score), or ``None``.

    Parameters
    ----------
    text
        The judge's answer; a ``<think>`` block is ignored. The last level named wins.

    Returns
    -------
    float or None
        ``1.0``, ``0.5``, ``0.25`` or ``0.0``.
    """
    s = re.sub(r"(?s)<think>.*?</think>", " ", str(text)).lower()
    hits = [(s.rfind(name), score) for name, score in LEVEL_BY_NAME.items() if name in s]
    if hits:
        return max(hits)[1]
    m = re.findall(r"(?<![\d.])(1(?:\.0+)?|0?\.5|0?\.25|0(?:\.0+)?)(?![\d.])", s)
    return float(m[-1]) if m else None


class LLMJudge:
    """Judge pairs with any annotation backend; judgments cached in memory (and SQLite).

    Parameters
    ----------
    backend
        A :class:`~cellreasoner.backends.Backend` or a registry name (``"openai"``, ...).
    cache_path
        Optional SQLite file for judgments across sessions (default: memory only).
    sampling
        Generation settings (default: near-greedy, 64 new tokens).
    """

    def __init__(self, backend: Backend | str, cache_path: str | os.PathLike | None = None,
                 sampling: SamplingParams | None = None):
        from ..backends import get_backend
        from ..prompts import SamplingParams

        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.sampling = sampling or SamplingParams(temperature=0.01, top_p=0.01,
                                                   max_new_tokens=64, n=1)
        self._mem: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.calls = 0
        if cache_path is not None:
            path = Path(cache_path).expanduser()
            try:
                self._db = connect(path, [_SCHEMA])
            except (sqlite3.DatabaseError, OSError) as exc:
                raise InputError(f"Cannot use {path} as the judge cache ({exc}). Pass another "
                                 "cache_path, or None to keep judgments in memory.") from exc

    @property
    def _model(self) -> str:
        d = self.backend.describe()
        return f"{d.get('backend', '')}:{d.get('model', '')}"

    def prompt(self, truth: str, pred: str) -> Prompt:
        """The judge's prompt for one pair."""
        from ..prompts import Prompt

        return Prompt(instruction=JUDGE_INSTRUCTION,
                      sentence=f"Ground truth: {truth}\nModel prediction: {pred}")

    def _cached(self, key: tuple[str, str]) -> float | None:
        if key in self._mem:
            return self._mem[key]
        if self._db is not None:
            row = self._db.execute("SELECT score FROM judgments WHERE model=? AND truth=? AND "
                                   "prediction=?", (self._model, *key)).fetchone()
            if row is not None:
                self._mem[key] = float(row[0])
                return float(row[0])
        return None

    def _ask(self, todo: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
        """Judge ``todo`` in one backend batch; rows for the SQLite cache."""
        gens = self.backend.generate([self.prompt(*k) for k in todo], self.sampling)
        self.calls += len(todo)
        if len(gens) != len(todo):
            raise BackendError(f"Judge backend returned {len(gens)} answers for "
                               f"{len(todo)} prompts.")
        rows = []
        for k, g in zip(todo, gens, strict=True):
            if g and g[0].meta.get("error"):  # the backend gave up on it (failed_generations)
                raise BackendError(f"The judge backend gave no usable answer for pair {k}: "
                                   f"{g[0].meta['error']}")
            raw = g[0].text if g else ""
            score = parse_judgment(raw)
            if score is None:
                raise BackendError(f"Could not read a level from the judge's answer "
                                   f"{raw[:200]!r} for pair {k}. Expected one of "
                                   f"{list(LEVELS.values())}.")
            with self._lock:
                self._mem[k] = score
            rows.append((self._model, k[0], k[1], score, raw))
        return rows

    def judge_many(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Scores for ``pairs``; uncached pairs go to the backend in one batch.

        Parameters
        ----------
        pairs
            ``(truth, prediction)`` label pairs.

        Returns
        -------
        list of float
            One level score per pair.
        """
        keys = [(str(t), str(p)) for t, p in pairs]
        todo = [k for k in dict.fromkeys(keys) if self._cached(k) is None]
        if todo:
            rows = self._ask(todo)
            if self._db is not None:
                with transaction(self._db):
                    self._db.executemany("INSERT OR REPLACE INTO judgments VALUES (?,?,?,?,?)",
                                         rows)
        return [self._mem[k] for k in keys]

    def judge(self, truth: str, pred: str) -> float:
        """Score of one pair (see :meth:`judge_many`)."""
        return self.judge_many([(truth, pred)])[0]

    def close(self) -> None:
        """Close the SQLite cache (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
