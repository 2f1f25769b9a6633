"""Composition of CL T- and B-cell terms from label tokens (``CD8 TEM``, ``naive B``).

Annotators write T- and B-cell subsets in any order and abbreviation; these rules read the
tokens of a :func:`~cellreasoner.ontology.normalize`-d label and name the CL term.
"""

from __future__ import annotations

import re

_LINEAGE_NOT_T = {"b", "mono", "monocyte", "macrophage", "dendritic", "dc", "pdc", "cdc",
                  "neutrophil", "plasma", "epithelial", "endothelial", "fibroblast", "nk",
                  "myeloid", "mast", "erythrocyte", "platelet", "hepatocyte", "natural"}
_T_TOKENS = {"t", "tconv", "tc", "tex", "tem", "tcm", "temra", "treg", "th", "th1", "th2",
             "th17", "th22", "tfh", "ctl", "mait", "nkt", "tprolif", "t-helper", "trm", "tn",
             "thelper", "lymphocyte"}


_B_SUBSETS = (("switched", "CL:0000972"), ("class-switched", "CL:0000972"),
              ("unswitched", "CL:0000970"), ("memory", "CL:0000787"), ("naive", "CL:0000788"),
              ("germinal", "CL:0000844"), ("gc", "CL:0000844"), ("transitional", "CL:0000818"),
              ("immature", "CL:0000816"), ("plasma", "CL:0000786"))


def compose_b(tokens: list[str]) -> str | None:
    """B-cell subsets written in any order (``B memory``, ``naive B``, ``B_cells_switched``)."""
    ts = set(tokens)
    if "b" not in ts or ts & (_T_TOKENS | {"nk", "mono", "monocyte", "dc", "macrophage"}):
        return None
    for tok, cid in _B_SUBSETS:
        if tok in ts:
            return cid
    return "CL:0000236"


def compose_t(tokens: list[str]) -> str | None:
    """Compose a CL T-cell term from tokens such as ``cd8 tem``, ``naive cd4``, ``cd4 treg``."""
    ts = set(tokens)
    has_cd4 = bool(ts & {"cd4", "cd4-positive"})
    has_cd8 = bool(ts & {"cd8", "cd8-positive", "cd8a", "cd8a-positive"})
    t_evidence = (bool(ts & _T_TOKENS) and ("lymphocyte" not in ts or "t" in ts)) or bool(
        ts & {"gamma-delta", "gdt", "mait", "nkt"})
    if ts & _LINEAGE_NOT_T and not (ts & {"t", "nkt"}):
        return None
    if not t_evidence and not (has_cd4 or has_cd8):
        return None
    if "gamma-delta" in ts or "gdt" in ts:
        return "CL:0000798"
    if "mait" in ts:
        return "CL:0000940"
    if "nkt" in ts or ("nk" in ts and "t" in ts) or "nk-like" in ts:
        return "CL:0000814"
    if ts & {"treg", "regulatory", "t-reg"} or ("reg" in ts and "t" in ts):
        return "CL:0000795" if has_cd8 and not has_cd4 else (
            "CL:0000792" if has_cd4 else "CL:0000815")
    for tok, cid in (("th1", "CL:0000545"), ("th2", "CL:0000546"), ("th17", "CL:0000899"),
                     ("th22", "CL:0001042"), ("tfh", "CL:0002038")):
        if tok in ts:
            return cid
    if "follicular" in ts and "helper" in ts:
        return "CL:0002038"
    naive = bool(ts & {"naive", "tn"})
    memory = "memory" in ts
    temra = "temra" in ts or ("terminally" in ts and memory)
    tem = "tem" in ts or ("effector" in ts and memory)
    tcm = "tcm" in ts or ("central" in ts and memory)
    exhausted = bool(ts & {"tex", "exhausted"})
    cytotoxic = bool(ts & {"cytotoxic", "ctl", "tc"})
    helper = bool(ts & {"helper", "th", "t-helper", "thelper"})
    if has_cd4 and has_cd8:
        return "CL:0000084"
    if has_cd4:
        for flag, cid in ((temra, "CL:0001087"), (tem, "CL:0000905"), (tcm, "CL:0000904"),
                          (naive, "CL:0000895"), (memory, "CL:0000897"),
                          (exhausted, "CL:0020030"), (cytotoxic, "CL:0000934"),
                          (helper, "CL:0000492")):
            if flag:
                return cid
        return "CL:0000624"
    if has_cd8:
        for flag, cid in ((temra, "CL:0001062"), (tem, "CL:0000913"), (tcm, "CL:0000907"),
                          (naive, "CL:0000900"), (memory, "CL:0000909"),
                          (exhausted, "CL:0020031"), (cytotoxic, "CL:0000794")):
            if flag:
                return cid
        return "CL:0000625"
    for flag, cid in ((temra, "CL:4030002"), (tem or tcm or memory or "trm" in ts, "CL:0000813"),
                      (naive, "CL:0000898"), (exhausted, "CL:0011025"),
                      (cytotoxic, "CL:0000910"), (helper, "CL:0000912"),
                      ("alpha-beta" in ts, "CL:0000789")):
        if flag:
            return cid
    return "CL:0000084"


GLUED = [
    (re.compile(r"\bcd([48])(?:-positive)?t(ex|conv|em|cm|reg|e|c)?\b"), r"cd\1 t\2"),
    (re.compile(r"\bcd3(?:-positive)?\s*t\b"), "t"),
    (re.compile(r"\bcd3t\b"), "t"),
    (re.compile(r"\btprolif\b"), "t"),
    (re.compile(r"\bt-prolif\w*\b"), "t"),
    (re.compile(r"\b(?:gamma-delta|gd|γδ)\s*-?\s*t\b"), "gamma-delta t"),
    (re.compile(r"\bt\s+regulatory\b|\bregulatory\s+t\b"), "treg"),
    (re.compile(r"\bnatural\s+killer\b"), "nk"),
    (re.compile(r"\bth\s+(1|2|17|22)\b"), r"th\1"),
    (re.compile(r"\bt\s+helper\b|\bhelper\s+t\b"), "t helper"),
]
