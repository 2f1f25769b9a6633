"""Reading expression into the reasoner's cells x markers evidence (a mixin of
:class:`~.reasoner.Reasoner`): which data columns measure which marker, the evidence matrix,
and the columns the refinement leaves out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from ...errors import InputError
from .markers import ALIASES


class Inputs:
    """Expression -> marker evidence for :class:`~.reasoner.Reasoner`."""

    def _gene_columns(self, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(column in the data, marker index) for every marker the data measures, and the
        marker names as the data spells them (older aliases such as IGJ for JCHAIN)."""
        pos: dict[str, int] = {}
        for j, g in enumerate(genes):
            g = str(g)
            if g not in pos:
                pos[g] = j
        cols, idx = [], []
        spelled = list(self.genes)
        for m, g in enumerate(self.genes):
            j = pos.get(g)
            if j is None:
                for alias in ALIASES.get(g, ()):
                    if alias in pos:
                        j = pos[alias]
                        spelled[m] = alias
                        break
            if j is not None:
                cols.append(j)
                idx.append(m)
        return np.asarray(cols, dtype=np.int64), np.asarray(idx, dtype=np.int64), spelled

    def _marker_matrix(self, X, genes: Sequence[str]
                       ) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
        """Cells x markers evidence in [0, 1] (CSR), the measured-marker mask and the marker
        names as spelled in ``genes``."""
        if X.ndim != 2:
            raise InputError(f"Expression must be a 2-D cells x genes matrix, got {X.ndim}-D.")
        if X.shape[1] != len(genes):
            raise InputError(f"The matrix has {X.shape[1]} columns but {len(genes)} gene names "
                             "were given: pass one symbol per column.")
        X = sp.csr_matrix(X) if not sp.isspmatrix_csr(X) else X
        if X.nnz and X.data.min() < 0:
            raise InputError("The expression matrix has negative values (scaled data?). Pass "
                             "raw counts or log-normalised expression (e.g. adata.raw or a "
                             "'counts' layer), not z-scores.")
        from ...checks import log_normalize, looks_like_counts

        if looks_like_counts(X):
            X = log_normalize(X)
        cols, idx, spelled = self._gene_columns(genes)
        if len(idx) == 0:
            example = ", ".join(list(genes)[:3])
            upper = {str(g).upper() for g in self.genes}
            other = (" They match when ignoring case: for mouse data (Cd3e) pass "
                     "species='mouse' (--species mouse or auto)."
                     if any(str(g).upper() in upper for g in genes) else "")
            raise InputError(
                f"None of the {len(self.genes)} marker genes is among the {len(genes)} gene "
                f"names (e.g. {example}). Pass gene symbols (HGNC, e.g. CD3E), not Ensembl ids: "
                "use the var column holding symbols (adata.var['gene_symbols'] or similar)."
                + other)
        measured = np.zeros(len(self.genes), dtype=bool)
        measured[idx] = True
        sub = X[:, cols].astype(np.float32)
        sub = sp.csr_matrix(sub)
        sub.data = np.minimum(sub.data / self.level, 1.0, dtype=np.float32)
        sub.eliminate_zeros()
        # scatter columns into marker order
        E = sub @ sp.csr_matrix(
            (np.ones(len(idx), dtype=np.float32), (np.arange(len(idx)), idx)),
            shape=(len(idx), len(self.genes)),
        )
        return sp.csr_matrix(E), measured, spelled

    def _decisive_columns(self, genes: Sequence[str]) -> Callable[[int], np.ndarray]:
        """parent -> data columns of its children's decisive markers (left out of the
        refinement classifier's features): every column spelling one, duplicates and older
        aliases included."""
        columns: dict[str, list[int]] = {}
        for j, g in enumerate(genes):
            columns.setdefault(str(g), []).append(j)

        def excluded(parent: int) -> np.ndarray:
            kids = np.flatnonzero(self.child_mask[parent])
            out: list[int] = []
            for m in np.unique(self._decisive[kids].indices):
                for name in (self.genes[m], *ALIASES.get(self.genes[m], ())):
                    out.extend(columns.get(name, ()))
            return np.asarray(sorted(out), dtype=np.int64)

        return excluded

    def _sentence_matrix(self, sentences: Sequence[str], gene_list: Sequence[str] | None,
                         max_genes: int) -> tuple[sp.csr_matrix, np.ndarray | sp.csr_matrix,
                                                  list[str]]:
        """Cells x markers presence of cell sentences, the measured markers (per cell when
        sentences were cut at ``max_genes``) and the markers as the sentences spell them."""
        gi = {g: i for i, g in enumerate(self.genes)}
        for g, alts in ALIASES.items():
            if g in gi:
                for a in alts:
                    gi.setdefault(a, gi[g])
        rows, cols = [], []
        spelled = list(self.genes)
        n = len(sentences)
        lengths = np.zeros(n, dtype=np.int64)
        last = [""] * n
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise InputError(f"Cell sentence {i} is {type(s).__name__}, not text.")
            toks = [t.strip() for t in s.split(",")]
            toks = [t for t in toks if t]
            lengths[i] = len(toks)
            if toks:
                last[i] = toks[-1]
            for t in toks:
                m = gi.get(t)
                if m is not None:
                    rows.append(i)
                    cols.append(m)
                    if t != self.genes[m]:
                        spelled[m] = t
        E = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                          shape=(n, len(self.genes)))
        E.sum_duplicates()
        E.data[:] = 1.0
        if gene_list is None:
            measured: np.ndarray | sp.csr_matrix = np.ones(len(self.genes), dtype=bool)
        else:
            rank = {g: r for r, g in enumerate(gene_list)}
            big = len(gene_list) + 1
            mrank = np.array([min([rank.get(g, big)] + [rank.get(a, big)
                                                        for a in ALIASES.get(g, ())])
                              for g in self.genes])
            in_list = mrank < big
            truncated = lengths >= max_genes
            if truncated.any():
                cutoff = np.array([rank.get(last[i], big) if truncated[i] else big
                                   for i in range(n)])
                A = (mrank[None, :] <= cutoff[:, None]) & in_list[None, :]
                measured = sp.csr_matrix(A.astype(np.float32))
            else:
                measured = in_list
        return E, measured, spelled
