"""Keeping secrets and private data private: URL redaction and owner-only cache files.

Redaction. A server URL may carry credentials (``http://user:PASS@host/v1?api-key=K``).
:func:`redact_url` replaces the userinfo and the values of secret-looking query parameters with
``***``; :func:`redact_text` does so for every URL inside a message and also blanks any secret
seen before (:func:`register_secret`: the API key, the parts :func:`redact_url` removed), so a
server that echoes a key back in an error body does not leak it either.
:class:`RedactingFilter` applies :func:`redact_text` to log records.

Private files. The cache holds every prompt and answer. :func:`private_dir` creates a folder
``0700`` (or tightens one the user owns) and :func:`private_file` makes a file ``0600``,
whatever the umask.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import warnings
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

#: What replaces a secret.
MASK = "***"
#: Query parameter names (lower case, ``-``/``_`` ignored) holding credentials: any name
#: containing one of these words.
SECRET_PARAM_WORDS = ("key", "token", "secret", "password", "passwd", "pwd", "pass", "sig",
                      "auth", "credential", "session", "cookie", "jwt", "bearer")
#: Secrets shorter than this are not blanked in free text (too many false matches).
MIN_SECRET_LEN = 4

#: A URL inside free text (trailing sentence punctuation is not part of it).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:!?)\]]")
#: An HTTP credential in text: ``Bearer <token>``, or ``Basic <base64>`` (a word of plain
#: letters after "basic" is prose, not a credential).
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=\-]{8,}|"
                     r"\b(Basic)\s+(?=[A-Za-z]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}")
_known: set[str] = set()
_known_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact_text` blanks it wherever it appears."""
    if not value:
        return
    forms = {value, unquote(value), quote(value, safe="")}  # as typed, decoded, encoded
    with _known_lock:
        _known.update(f for f in forms if len(f) >= MIN_SECRET_LEN)


def register_url(url: str) -> None:
    """Register the credentials in ``url`` (see :func:`redact_url`) for :func:`redact_text`."""
    redact_url(url)


def _secret_param(name: str) -> bool:
    key = name.lower().replace("-", "").replace("_", "")
    return any(word in key for word in SECRET_PARAM_WORDS)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query values replaced by ``***``.

    Parameters
    ----------
    url
        Any URL (a string that does not parse as one is returned unchanged).

    Returns
    -------
    str
        E.g. ``http://***@host/v1?api-key=***&model=x`` for
        ``http://u:PASS@host/v1?api-key=K&model=x``. The removed parts are registered with
        :func:`register_secret`.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:  # unparseable: keep nothing of it after the scheme
        return f"{url.split('://', 1)[0]}://{MASK}" if "://" in url else url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        # the password, or a bare token used as the user name; a plain user name is not
        # blanked in free text (it is often an ordinary word)
        register_secret(password or user)
        netloc = f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            for k, v in pairs:
                if _secret_param(k):
                    register_secret(v)
            query = urlencode([(k, MASK if _secret_param(k) else v) for k, v in pairs],
                              safe="*/:@,")
    fragment = parts.fragment
    if fragment and ("=" in fragment):  # OAuth-style #access_token=...
        fragment = MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL passed through :func:`redact_url`, ``Bearer``/``Basic``
    credentials and every registered secret replaced by ``***``."""
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    out = _BEARER.sub(lambda m: f"{m.group(1) or m.group(2)} {MASK}", out)
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def redact_value(obj):
    """A copy of ``obj`` (nested dicts/lists/strings) with every string through
    :func:`redact_text`; other values unchanged."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_value(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_value(v) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message and redacts it (see
    :func:`redact_text`); install it on handlers so it sees every library's records."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging API
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to the formatter
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add one :class:`RedactingFilter` to every handler of ``logger`` (default: root)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


#: Loggers that print request URLs (the HTTP clients and our OpenAI backend). A logger's own
#: filter sees every record it logs, whatever handlers the application has set up.
URL_LOGGERS = ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "openai._base_client",
               "cellreasoner.backends.openai")  # the openai SDK 3.x runs on httpx2


def _filter_url_loggers() -> None:
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


_filter_url_loggers()  # from Python too, not only from the CLI


# --------------------------------------------------------------------------- private files

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def private_dir(path: str | os.PathLike, *, tighten: bool = True) -> Path:
    """Create ``path`` (and missing parents) as ``0700`` folders, or tighten it to ``0700``.

    With ``tighten`` (default), an existing folder this user owns that others can read or
    enter is tightened (with a warning saying so); one owned by another user, or one that
    cannot be changed, only draws a warning. Returns the path.
    """
    p = Path(path).expanduser()
    missing = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # another process made it first
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is cut by the umask; chmod is not
    if tighten and not missing and p.is_dir():
        _tighten(p, PRIVATE_DIR_MODE, "folder")
    return p


def private_cache_dir(path: str | os.PathLike) -> Path:
    """:func:`private_dir` for the cache root: a folder that cannot be created or changed
    (a read-only location) draws a warning instead of an error; writes there fail later with
    their own message."""
    try:
        return private_dir(path)
    except OSError as exc:
        warnings.warn(f"Could not create the cellreasoner cache folder {path} ({exc}); set "
                      "$CELLREASONER_CACHE to a writable folder.", RuntimeWarning, stacklevel=3)
        return Path(path).expanduser()


def private_file(path: str | os.PathLike) -> Path:
    """Create ``path`` empty as ``0600`` when missing, or tighten it to ``0600``."""
    p = Path(path).expanduser()
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE)
    except FileExistsError:
        if p.is_file():  # a folder or device there is left for the caller's open to reject
            _tighten(p, PRIVATE_FILE_MODE, "file")
        return p
    os.close(fd)
    os.chmod(p, PRIVATE_FILE_MODE)
    return p


def _tighten(path: Path, mode: int, what: str) -> None:
    current = _mode(path)
    if not current & 0o077:
        return
    if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
        warnings.warn(f"The cellreasoner cache {what} {path} belongs to another user and is "
                      f"readable by others (mode {current:04o}); point $CELLREASONER_CACHE at "
                      "a folder of your own.", RuntimeWarning, stacklevel=3)
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        warnings.warn(f"The cellreasoner cache {what} {path} is readable by others (mode "
                      f"{current:04o}) and could not be made private ({exc}); run "
                      f"chmod {mode:o} {path}.", RuntimeWarning, stacklevel=3)
        return
    if what == "folder":
        warnings.warn(f"Made the cellreasoner cache folder {path} private (mode {current:04o} "
                      f"-> {mode:04o}): it holds every prompt and answer.", RuntimeWarning,
                      stacklevel=3)


__all__ = ["MASK", "RedactingFilter", "install_log_redaction", "private_cache_dir",
           "private_dir", "private_file",
           "redact_text", "redact_url", "redact_value", "register_secret", "register_url"]
