"""What this machine lends a run: the CPU cores the process may use; handing freed memory
back to it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``), after a step
    that freed a lot of small and mid-sized arrays (the process's resident size would
    otherwise stay at its peak); ``False`` where the C library has no such call."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


__all__ = ["available_cores", "release_memory"]
