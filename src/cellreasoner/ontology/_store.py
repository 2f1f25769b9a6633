"""The on-disk Cell Ontology index: plain JSON, checked before use, never executable.

The index used to be a pickle, and unpickling a file runs whatever code it names: a file
planted in the cache folder would have run during a normal annotate. It is now JSON in two
lines: a header (format name, layout version, CL version, SHA-256 and length of the body) and
the body. :func:`load_index` trusts a file only when the header names this format and layout,
the CL version matches, the body's hash matches and every table has the expected type;
anything else (a pickle, a truncated or edited file, another version) is reported as
unusable, and the caller rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

#: The header's ``format`` value.
FORMAT_NAME = "cellreasoner-cl-index"
#: Bump when the layout of the body changes.
LAYOUT = 5
#: The pickle files older versions wrote (never opened; removed when seen).
LEGACY_GLOB = "cl_index_*.pkl"

log = logging.getLogger(__name__)

_DICT_TABLES = ("labels", "synonyms", "ancestors", "replaced_by", "children", "lookup")


def index_path(folder: Path, version: str) -> Path:
    """Where the index of CL ``version`` lives in ``folder``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in version)
    return folder / f"cl_index_{safe}_v{LAYOUT}.json"


def _body(index: dict) -> dict:
    """The JSON-ready body (sets as sorted lists, tuples as lists)."""
    return {"labels": index["labels"], "synonyms": index["synonyms"],
            "ancestors": index["ancestors"], "deprecated": sorted(index["deprecated"]),
            "replaced_by": index["replaced_by"], "children": index["children"],
            "lookup": index["lookup"]}


def save_index(path: Path, index: dict) -> None:
    """Write ``index`` to ``path`` atomically, ``0600`` (a temporary file renamed into place)."""
    body = json.dumps(_body(index), separators=(",", ":"), ensure_ascii=False).encode()
    header = {"format": FORMAT_NAME, "layout": LAYOUT, "cl_version": index["version"],
              "sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cl_index.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(header).encode() + b"\n" + body)
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: Path, version: str) -> tuple[dict | None, str]:
    """The index stored at ``path`` for CL ``version``, or ``(None, why it is unusable)``.

    Nothing in the file is executed: it is parsed as JSON and checked field by field.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc})"
    head, sep, body = raw.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        return None, "is not a cellreasoner ontology index"
    if header.get("layout") != LAYOUT or header.get("cl_version") != version:
        return None, (f"holds layout {header.get('layout')!r} of CL "
                      f"{header.get('cl_version')!r}, not layout {LAYOUT} of CL {version!r}")
    if header.get("length") != len(body) or \
            header.get("sha256") != hashlib.sha256(body).hexdigest():
        return None, "is truncated or was changed (its checksum does not match)"
    try:
        data = json.loads(body)
        index = _from_body(data, version)
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, f"has an unexpected layout ({type(exc).__name__}: {exc})"
    return index, ""


def _from_body(data: dict, version: str) -> dict:
    """The in-memory index (tuples and sets restored) from a parsed body, type-checked."""
    if not isinstance(data, dict) or not isinstance(data.get("deprecated"), list):
        raise TypeError("the body is not an object with a 'deprecated' list")
    for name in _DICT_TABLES:
        if not isinstance(data.get(name), dict):
            raise TypeError(f"table {name!r} is not an object")
    labels = data["labels"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TypeError("table 'labels' holds non-text entries")
    ancestors = {cid: {a: int(d) for a, d in anc.items()}
                 for cid, anc in data["ancestors"].items()}
    lookup = {}
    for key, pair in data["lookup"].items():
        cid, kind = pair
        if not isinstance(cid, str) or kind not in ("exact", "synonym"):
            raise TypeError(f"lookup entry {key!r} is not [id, 'exact'|'synonym']")
        lookup[key] = (cid, kind)
    return {"format": LAYOUT, "version": version, "labels": labels,
            "synonyms": {cid: tuple(map(str, syn)) for cid, syn in data["synonyms"].items()},
            "ancestors": ancestors, "deprecated": set(map(str, data["deprecated"])),
            "replaced_by": {str(k): str(v) for k, v in data["replaced_by"].items()},
            "children": {cid: list(map(str, kids)) for cid, kids in data["children"].items()},
            "lookup": lookup}


def remove_legacy(folder: Path) -> list[Path]:
    """Delete the pickle indexes older versions left in ``folder`` (without opening them)."""
    removed = []
    for old in folder.glob(LEGACY_GLOB):
        try:
            old.unlink()
        except OSError as exc:  # e.g. another user's file: it is never read anyway
            log.debug("could not remove the old pickle index %s: %s", old, exc)
        else:
            removed.append(old)
    return removed
