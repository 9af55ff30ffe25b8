"""The CPUs a benchmark runs on: counted from the process's affinity mask, and optionally narrowed.

``os.cpu_count()`` counts the machine's CPUs, not the ones this process may use, so a benchmark started
under ``taskset`` (or in a container with a CPU set) reported the wrong figure. ``pin(n)`` narrows the
mask to the first ``n`` allowed CPUs before any server starts; every child process inherits it, so one
many-core machine can measure the same benchmark on 2, 4 or 16 CPUs.
"""

from __future__ import annotations

import os


def available() -> int:
    """How many CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def pin(count: int) -> list[int]:
    """Restrict this process (and the children it starts afterwards) to the first ``count`` allowed CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(allowed):
        raise ValueError(f"--cpus {count}: this process may use {len(allowed)} CPUs ({allowed})")
    chosen = allowed[:count]
    os.sched_setaffinity(0, chosen)
    return chosen
