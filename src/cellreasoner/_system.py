"""What this machine lends a run: the CPU cores the process may use and the memory available;
handing freed memory back to it."""

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


def available_memory() -> int:
    """Bytes of memory available to new work: the kernel's MemAvailable (free memory and the
    page cache it can reclaim), else the free pages."""
    meminfo = "/proc/meminfo"
    if os.path.isfile(meminfo):
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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


__all__ = ["available_cores", "available_memory", "release_memory"]
