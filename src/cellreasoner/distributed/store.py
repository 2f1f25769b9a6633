"""Where a run manifest's objects live: a local folder or an object-store prefix.

:class:`ManifestStore` reads and writes whole named objects (``manifest.json``,
``blocks/<name>.parquet``) below one location, through :mod:`pyarrow.fs` for a URI
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://namenode:8020/path``) and through
:func:`cellreasoner.io.write.atomic_path` for a local folder (a plain path or a ``file://``
URI). Each write is atomic: locally a temporary file renamed into place; on an object store
one PUT, which the store makes visible whole or not at all (there is no rename there).

Credentials come from the store's usual configuration (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL``, ``~/.aws``; Google's
application default credentials; Hadoop's config). A URI that carries them anyway
(``s3://KEY:SECRET@bucket``, ``?secret_key=...``) still works, but only its redacted form
(:func:`cellreasoner._secrets.redact_url`) is ever shown: :attr:`ManifestStore.display` in
logs, provenance and error messages; nothing of the URI is written into the manifest.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .._secrets import redact_text, redact_url, register_secret
from ..errors import InputError, OutputError
from ..io.write import atomic_path

_HINT = ("pass a local folder or an s3://bucket/prefix, gs://bucket/prefix, "
         "hdfs://host:port/path or file:///path URI (credentials belong in the environment: "
         "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; not in the URI)")


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location


def _register_userinfo(uri: str) -> None:
    """Register both halves of a URI's ``user:password@`` (an S3 key id and its secret), so
    that :func:`redact_text` blanks either wherever a store's message repeats it."""
    netloc = urlsplit(uri).netloc
    if "@" in netloc:
        for part in netloc.rsplit("@", 1)[0].split(":", 1):
            register_secret(unquote(part))


def _with_single_put(uri: str) -> str:
    """An ``s3://`` URI with ``allow_delayed_open=true`` unless it sets it: a small object
    (every manifest and block file) is then one PutObject instead of a three-request
    multipart upload."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or "allow_delayed_open" in parts.query:
        return uri
    return uri + ("&" if parts.query else "?") + "allow_delayed_open=true"


def _from_uri(uri: str, display: str):
    """``pyarrow.fs.FileSystem.from_uri`` with its errors as one :class:`InputError`."""
    from pyarrow import fs as pafs

    try:
        try:
            return pafs.FileSystem.from_uri(_with_single_put(uri))
        except ValueError as exc:  # a pyarrow that does not know allow_delayed_open
            if "allow_delayed_open" not in str(exc):
                raise
            return pafs.FileSystem.from_uri(uri)
    except ValueError as exc:  # pyarrow.ArrowInvalid: an unknown scheme, a malformed URI
        raise InputError(f"Manifest {display}: {redact_text(str(exc))}; {_HINT}.") from None
    except (OSError, ImportError) as exc:  # e.g. hdfs without a JVM / libhdfs
        raise InputError(f"Manifest {display}: the store cannot be opened "
                         f"({ManifestStore.reason(exc)}); install and configure "
                         "its client (for hdfs: JAVA_HOME, HADOOP_HOME, CLASSPATH) or "
                         f"{_HINT}.") from None


class ManifestStore:
    """Named objects below one location: a local folder or an object-store URI.

    Parameters
    ----------
    location
        A local folder (a path, or a ``file://`` URI), or an object-store URI such as
        ``s3://bucket/prefix`` (its query may set pyarrow's S3 options, e.g.
        ``?endpoint_override=host:9000&scheme=http&region=eu-west-1``). The folder is made on
        the first write; a bucket must exist already.

    Raises
    ------
    InputError
        An unknown scheme, a store that cannot be reached, a bucket that does not exist, or
        a file where the folder should be; the message names the redacted location.
    """

    def __init__(self, location: str | os.PathLike) -> None:
        self.fs = None
        if not is_uri(location):
            self.root: Path | str = Path(location)
            #: the location as shown in logs, provenance and messages (secrets redacted)
            self.display = str(self.root)
        else:
            uri = str(location)
            _register_userinfo(uri)
            self.display = redact_url(uri)
            fs, path = _from_uri(uri, self.display)
            if fs.type_name == "local":
                self.root = Path(path)
                self.display = str(self.root)
            else:
                self.fs, self.root = fs, path.rstrip("/") or path
                self._check_store()
        if isinstance(self.root, Path) and self.root.exists() and not self.root.is_dir():
            raise InputError(f"Manifest {self.display}: a file is in the way; the manifest is "
                             "a folder. Pass another --manifest path.")

    @property
    def local(self) -> bool:
        """Whether the objects are files in a local folder."""
        return self.fs is None

    def where(self, name: str) -> str:
        """Object ``name`` as shown to users (redacted; a URI's query stays at its end)."""
        if self.local:
            return str(self.root / name)
        parts = urlsplit(self.display)
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _check_store(self) -> None:
        """Reach the store once; its bucket must exist and the prefix must not be a file."""
        from pyarrow import fs as pafs

        bucket = self.root.split("/", 1)[0]
        buckets = self.fs.type_name in ("s3", "gcs")
        if buckets and not bucket:
            raise InputError(f"Manifest {self.display}: name a bucket (and a prefix), e.g. "
                             "s3://my-bucket/runs/atlas.")
        try:
            if buckets and self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise InputError(f"Manifest {self.display}: the bucket '{bucket}' does not "
                                 "exist (or these credentials cannot see it); create it first "
                                 "or pass another --manifest.")
            kind = self.fs.get_file_info(self.root).type
        except OSError as exc:
            where = ("its endpoint (endpoint_override= in the URI or AWS_ENDPOINT_URL), the "
                     "network and the credentials in the environment (AWS_ACCESS_KEY_ID, "
                     "AWS_SECRET_ACCESS_KEY)" if self.fs.type_name == "s3" else
                     "its address, the network and the store's credentials")
            raise InputError(f"Manifest {self.display}: the store cannot be reached "
                             f"({self.reason(exc)}); check {where}, or pass a local "
                             "folder.") from None
        if kind == pafs.FileType.File:
            raise InputError(f"Manifest {self.display}: an object is in the way; the manifest "
                             "is a prefix (a folder). Pass another --manifest.")

    @staticmethod
    def reason(exc: BaseException) -> str:
        """The first line of ``exc``'s message, redacted (the part worth showing)."""
        lines = redact_text(str(exc)).splitlines()
        return lines[0] if lines else type(exc).__name__

    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists."""
        if self.local:
            return (self.root / name).is_file()
        from pyarrow import fs as pafs

        try:
            return self.fs.get_file_info(self._key(name)).type == pafs.FileType.File
        except OSError as exc:
            raise InputError(f"Manifest {self.where(name)} cannot be read "
                             f"({self.reason(exc)}); check the store and try again.") from None

    def names(self, folder: str) -> set[str]:
        """The objects directly below ``folder`` (names relative to the store's root)."""
        if self.local:
            base = self.root / folder
            return {f"{folder}/{p.name}" for p in base.iterdir()
                    if p.is_file()} if base.is_dir() else set()
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(self._key(folder), allow_not_found=True))
        except OSError as exc:
            raise InputError(f"Manifest {self.where(folder)} cannot be listed "
                             f"({self.reason(exc)}); check the store and try again.") from None
        return {f"{folder}/{i.base_name}" for i in infos if i.type == pafs.FileType.File}

    def read(self, name: str) -> bytes:
        """The bytes of object ``name`` (:class:`OSError` when it cannot be read)."""
        if self.local:
            return (self.root / name).read_bytes()
        with self.fs.open_input_stream(self._key(name)) as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        """Write object ``name`` whole: readers see the old object or the new, never a part.

        Raises
        ------
        OutputError
            The object cannot be written (the message names the redacted location).
        """
        if self.local:
            with atomic_path(self.root / name) as tmp:
                tmp.write_bytes(data)
            return
        try:
            with self.fs.open_output_stream(self._key(name)) as f:
                f.write(data)
        except OSError as exc:
            raise OutputError(f"Manifest {self.where(name)} cannot be written "
                              f"({self.reason(exc)}); check the store and its credentials, "
                              "then rerun the same command (finished blocks are kept).") \
                from None

    def read_parquet(self, name: str):
        """Object ``name`` read as a Parquet table (a :class:`pandas.DataFrame`)."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read(name)))

    def write_parquet(self, name: str, frame) -> None:
        """Write ``frame`` as Parquet object ``name`` (see :meth:`write`)."""
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        self.write(name, buf.getvalue())

    def __str__(self) -> str:
        return self.display


__all__ = ["ManifestStore", "is_uri"]
