"""What every ingest benchmark measures the same way: wall time, the client's CPU, the CPU of each server
process (from /proc) and of everything else on the machine, around a timed section."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

MB = 1_000_000
T = TypeVar("T")


@dataclasses.dataclass
class Measurement:
    instances: int
    dicom_bytes: int
    seconds: float
    requests: int
    failed_instances: int
    client_cpu_s: float
    server_cpu_s: dict[str, float]
    other_cpu_s: float  # CPU used meanwhile by processes that are not part of the measurement

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.dicom_bytes / MB / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "instances_per_s": self.instances_per_s, "mb_per_s": self.mb_per_s}

    @classmethod
    def of(cls, clock: Clock, instances: int, dicom_bytes: int, requests: int, failed: int) -> Measurement:
        return cls(
            instances,
            dicom_bytes,
            clock.seconds,
            requests,
            failed,
            clock.client_cpu_s,
            clock.server_cpu_s,
            clock.other_cpu_s,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc; 0.0 when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine (all CPUs, everything but idle and iowait) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time, this process's CPU time, the CPU time of named server processes and of everything else."""

    def __init__(self, servers: dict[str, int]) -> None:
        self._servers = servers

    def __enter__(self) -> Clock:
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self._servers.items()}
        self._proc0 = time.process_time()
        self._busy0 = busy_cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.client_cpu_s = time.process_time() - self._proc0
        self.server_cpu_s = {name: cpu_seconds(pid) - self._cpu0[name] for name, pid in self._servers.items()}
        ours = self.client_cpu_s + sum(self.server_cpu_s.values())
        self.other_cpu_s = max(0.0, busy_cpu_seconds() - self._busy0 - ours)


async def drain(
    items: list[T], handle: Callable[[T], Awaitable[None]], servers: dict[str, int], concurrency: int
) -> Clock:
    """``handle`` every item, ``concurrency`` at a time, in order; returns the clock of the whole."""
    queue = list(reversed(items))

    async def worker() -> None:
        while queue:
            await handle(queue.pop())

    with Clock(servers) as clock:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clock


def median_run(runs: list[Measurement]) -> dict[str, Any]:
    best = sorted(runs, key=lambda m: m.seconds)[len(runs) // 2]
    return {**best.as_dict(), "runs_instances_per_s": [m.instances_per_s for m in runs]}
