"""Check that an allocation a file asks for can be made, before making it.

A file's claims decide how much memory decoding or building a model takes. Rather than let numpy or
torch fail half-way (MemoryError, or the kernel's OOM killer), compare the claim with what this process
can still get: the address-space limit (RLIMIT_AS), the cgroup's memory limit, and available memory.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from aprtool.errors import LimitError


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_bytes() -> int:
    """What this process can still allocate, by the tightest of the limits that apply."""
    page = os.sysconf("SC_PAGE_SIZE")
    limits = [os.sysconf("SC_PHYS_PAGES") * page]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    vm_pages = _read_int("/proc/self/statm")
    if soft != resource.RLIM_INFINITY and vm_pages is not None:
        limits.append(soft - vm_pages * page)
    cgroup_max, cgroup_now = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if cgroup_max is not None and cgroup_now is not None:
        limits.append(cgroup_max - cgroup_now)
    available = _mem_available()
    if available is not None:
        limits.append(available)
    return max(min(limits), 0)


def ensure_allocatable(nbytes: int, what: str) -> None:
    """LimitError (exit 4) naming `what` if `nbytes` cannot be allocated now."""
    available = available_bytes()
    if nbytes > available:
        raise LimitError(f"{what}: needs {nbytes:,} bytes of memory, this process can get {available:,}")
