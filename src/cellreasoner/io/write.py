"""Atomic outputs: the one writer every output goes through.

:func:`atomic_path` gives a fresh temporary file beside the target (a unique name, so concurrent
runs never share one) and renames it over the target only when writing succeeded; it deletes
only the temporary file it created. An advisory lock (:func:`output_lock`) makes a second run
writing the same path fail at once with a clear error. OS errors (read-only folder, a folder in
the way, a parent that is a file, disk full) become one :class:`~cellreasoner.errors.OutputError`
naming the path. :func:`claim_outputs` checks all of a command's outputs (no two the same file,
none the input, every folder writable) *before* the work starts. HDF5 writes run in a child
process (:func:`write_isolated`): the HDF5 library can crash the process after a failed write.
"""

from __future__ import annotations

import builtins
import errno
import gc
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .._system import release_memory
from ..errors import CellReasonerError, InputError, OutputError

try:  # POSIX advisory locks; elsewhere the unique temporary names alone keep outputs whole
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike

#: First bytes of our lock files: only files carrying it are ever removed.
LOCK_MARK = b"cellreasoner output lock\n"

_REASONS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would exceed the file size limit of this system or process",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "a folder is in the way",
    errno.ENOTDIR: "a parent in the path is a file, not a folder",
    errno.EEXIST: "a parent in the path is a file, not a folder",
    errno.ENAMETOOLONG: "the file name is too long",
}

_held: dict[str, int] = {}  # locks this process holds (re-entrant: claim, then write)


def os_reason(exc: BaseException) -> str:
    """A short reason for an OS error (``errno`` first, else its first line)."""
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0].strip()


def output_error(path: PathLike, exc: BaseException | str) -> OutputError:
    """The one-line error for an output that could not be written."""
    reason = exc if isinstance(exc, str) else os_reason(exc)
    return OutputError(
        f"cannot write {os.fspath(path)}: {reason}. No partial file was left and a previous "
        "file there (if any) is unchanged; fix that or choose another output path."
    )


def _key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _make_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    if path.is_dir():
        raise output_error(path, "it is a folder; give a file name")


def _new_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give (the target's own, if any)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def temp_beside(path: PathLike, kind: str = "tmp") -> Path:
    """A new, empty, uniquely named file beside ``path`` (``.<stem>.<random>.<kind><suffix>``,
    keeping the suffix, which some writers check), with the mode ``path`` will have. OS errors
    become one :class:`~cellreasoner.errors.OutputError` naming ``path``."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                    suffix=f".{kind}{path.suffix}")
        os.close(fd)
        os.chmod(name, _new_mode(path))
    except OSError as exc:
        raise output_error(path, exc) from None
    return Path(name)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A new temporary path next to ``path``; renamed to ``path`` if the block succeeds.

    The temporary name is unique and keeps the suffix (``.x.<random>.tmp.h5ad``), since some
    writers check it. A block that fails, or a run killed meanwhile, leaves the previous file
    (if any) untouched; only the temporary file made here is ever removed. OS errors become
    one :class:`~cellreasoner.errors.OutputError` naming ``path``.

    Parameters
    ----------
    path
        The output file.

    Yields
    ------
    Path
        The temporary file to write (it exists, empty).
    """
    path = Path(path)
    _make_folder(path)
    with output_lock(path):
        tmp = temp_beside(path)
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)


def _lock_once(lock: Path, path: Path) -> tuple[int, bool] | None:
    """Take ``lock`` (fd, created); ``None`` when it vanished meanwhile (try again)."""
    try:
        fd, created = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        try:
            fd, created = os.open(lock, os.O_RDWR), False
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise output_error(path, exc) from None
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(
            f"another run is writing {path} (it holds {lock.name}); wait for it to finish or "
            "choose another output path."
        ) from None
    try:  # a run that just finished removes its lock file: ours must still be that name
        same = os.path.samestat(os.fstat(fd), os.stat(lock))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    if created or os.fstat(fd).st_size == 0:
        os.write(fd, LOCK_MARK + f"pid {os.getpid()}\n".encode())
    return fd, created


@contextmanager
def output_lock(path: PathLike) -> Iterator[None]:
    """Hold the advisory lock of output ``path`` (``.{name}.lock`` beside it).

    Raises :class:`~cellreasoner.errors.OutputError` at once when another process holds it.
    Re-entrant within a process. The lock file is removed afterwards, only if it is ours.
    """
    path = Path(path)
    key = _key(path)
    if key in _held or fcntl is None:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    lock = path.with_name(f".{path.name}.lock")
    got = None
    for _ in range(50):
        got = _lock_once(lock, path)
        if got is not None:
            break
    if got is None:  # pragma: no cover - 50 lock files removed under us in a row
        raise output_error(path, f"its lock file {lock.name} keeps disappearing")
    fd, created = got
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        try:
            if created or os.pread(fd, len(LOCK_MARK), 0) == LOCK_MARK:
                lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


def check_path_text(path: PathLike, label: str) -> None:
    """Refuse an output path that is not valid UTF-8 text (it could not be recorded or
    reported as it is); raises :class:`~cellreasoner.errors.InputError`."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{label} {text.encode('utf-8', 'surrogateescape')!r}: the path is not valid UTF-8 "
            "text (a byte such as \\xff in a file or folder name). Rename it using UTF-8 "
            "characters only."
        ) from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        both = a.exists() and b.exists()
        return a.samefile(b) if both else _key(a) == _key(b)
    except OSError:  # unreadable: compare the resolved names
        return _key(a) == _key(b)


def check_outputs(outputs: Mapping[str, PathLike | None],
                  inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Refuse outputs that are the same file as each other or as an input.

    Paths are compared resolved (symlinks), as files (hard links) and ignoring case (the same
    file on macOS and Windows). ``None`` entries are skipped.

    Parameters
    ----------
    outputs
        Option name (``"-o"``, ``"--csv"``...) -> output path.
    inputs
        Option name -> a file the command reads.

    Raises
    ------
    OutputError
        Naming both options and paths.
    InputError
        An output path that is not valid UTF-8 text (:func:`check_path_text`).
    """
    outs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(v)) for k, v in (inputs or {}).items() if v is not None]
    for label, p in outs:
        check_path_text(p, label)
    for i, (la, a) in enumerate(outs):
        for lb, b in outs[i + 1:]:
            if _same_file(a, b) or _key(a).casefold() == _key(b).casefold():
                raise OutputError(
                    f"{la} {a} and {lb} {b} are the same file: one would replace the other. "
                    "Give each output its own path."
                )
        for lb, b in ins:
            if _same_file(a, b):
                raise OutputError(
                    f"{la} {a} is the {lb} file {b}: writing it would replace what this run "
                    "reads (there is no in-place mode). Write to a new path."
                )


def check_writable(path: PathLike, label: str = "output") -> None:
    """Whether ``path`` can be written, without writing it: one clear error if not.

    The path must not be a folder; its nearest existing parent must be a folder this process
    can create files in (tried for real: permissions, read-only file systems).
    """
    p = Path(path)
    if p.is_dir():
        raise output_error(p, f"{label} is a folder; give a file name")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise output_error(p, f"{folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".cellreasoner-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(p, f"cannot create files in {folder} ({os_reason(exc)})") from None


@contextmanager
def claim_outputs(outputs: Mapping[str, PathLike | None],
                  inputs: Mapping[str, PathLike | None] | None = None) -> Iterator[None]:
    """Check every output of a command, then hold their locks while the block runs.

    Called before the model work starts, so a run that could not write its results fails
    first, not after hours of work: :func:`check_outputs`, :func:`check_writable` for each,
    then :func:`output_lock` for each (another run writing one of them is an error now).
    """
    check_outputs(outputs, inputs)
    paths = [Path(v) for v in outputs.values() if v is not None]
    for label, p in ((k, v) for k, v in outputs.items() if v is not None):
        check_writable(p, label)
    with ExitStack() as stack:
        for p in paths:
            _make_folder(p)
            stack.enter_context(output_lock(p))
        yield


#: Separates the child's captured stderr from its exception (as JSON data, never a pickle).
_EXC_MARK = b"\n\0cellreasoner-exception\0"


def write_isolated(write: Callable[[], object], path: PathLike) -> None:
    """Run ``write()`` in a forked child process; one clear error if it fails or crashes.

    After a failed write (disk full, file size limit) the HDF5 library can crash the whole
    process while it closes the file (a segmentation fault, hundreds of lines of HDF5
    diagnostics). In a child, a crash is contained: the parent reports one
    :class:`~cellreasoner.errors.OutputError` naming ``path`` (the reason read from the
    diagnostics), and an exception the child raised is raised again here. The child's stderr
    is shown only when it succeeded (warnings). Without ``os.fork`` it runs in-process.
    """
    if not hasattr(os, "fork"):  # pragma: no cover - Windows
        write()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # the child shares every resident page of this process: freed heap pages handed back
    # first are pages neither holds (at 1M cells: 180 MiB of the two processes' peak)
    gc.collect()
    release_memory()
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(write, err.fileno())
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        text, _, report = err.read().partition(_EXC_MARK)
    if status == 0:
        if text:
            sys.stderr.write(text.decode(errors="replace"))
        return
    exc = _exception_from(report)
    if isinstance(exc, CellReasonerError):
        raise exc
    # HDF5 reports the OS error inside its diagnostics (and its exceptions' text)
    code = re.search(rb"errno = (\d+)", text + str(exc).encode(errors="replace"))
    if code and (exc is None or isinstance(exc, OSError | RuntimeError)):
        exc = OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    if isinstance(exc, OSError):
        raise output_error(path, exc)
    if exc is not None:
        raise exc
    how = (f"the writer crashed (signal {os.WTERMSIG(status)})" if os.WIFSIGNALED(status)
           else f"the writer failed (exit status {os.WEXITSTATUS(status)})")
    raise output_error(path, how)


def _exception_data(exc: BaseException) -> bytes:
    """An exception as JSON: its class name and module, message, and OS error fields."""
    return json.dumps({
        "type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc),
        "errno": getattr(exc, "errno", None), "strerror": getattr(exc, "strerror", None),
        "filename": str(exc.filename) if getattr(exc, "filename", None) else None,
    }).encode()


def _exception_from(data: bytes) -> BaseException | None:
    """The child's exception rebuilt from :func:`_exception_data`: our own errors and the
    built-in exceptions as themselves (nothing is executed), anything else as a
    RuntimeError carrying its name and message."""
    if not data:
        return None
    try:
        info = json.loads(data)
        name, module, message = str(info["type"]), str(info["module"]), str(info["message"])
    except (ValueError, KeyError, TypeError):  # a half-written report (the child crashed)
        return None
    from .. import errors

    cls = {"builtins": builtins, errors.__name__: errors}.get(module)
    cls = getattr(cls, name, None) if cls is not None else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RuntimeError(f"{name}: {message}")
    if issubclass(cls, OSError) and info.get("errno") is not None:
        return cls(info["errno"], info.get("strerror") or message, info.get("filename"))
    try:
        return cls(message)
    except TypeError:  # a class that takes other arguments
        return RuntimeError(f"{name}: {message}")


def _child(write: Callable[[], object], err_fd: int) -> None:
    """The forked writer: run ``write``, report an exception to ``err_fd``, exit at once."""
    code = 0
    try:
        os.dup2(err_fd, 2)
        write()
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        code = 1
        data = _exception_data(exc)
        sys.stderr.flush()
        os.write(err_fd, _EXC_MARK + data)
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)  # no atexit: HDF5's own shutdown is what crashes


__all__ = ["LOCK_MARK", "atomic_path", "check_outputs", "check_path_text", "check_writable",
           "claim_outputs", "os_reason", "output_error", "output_lock", "temp_beside",
           "write_isolated"]
