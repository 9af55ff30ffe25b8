"""Child processes of the embedded stack, described as data so adding one is a one-line change."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessSpec:
    """One long-running child of ``radstream up``.

    ``ready`` is polled (blocking, cheap, no exceptions) until it returns True or ``ready_timeout_s``
    passes; the supervisor starts the next process only after this one is ready.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 60.0
    cwd: str | None = None
    log_path: Path | None = None  # stdout and stderr go here instead of the terminal


# Processes that decode and resize images run many small matrix products side by side: BLAS's own thread
# pool only spins (it doubled the local Lambda runtime's CPU per study). Each such process gets one thread.
SINGLE_THREADED_MATH = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for stacks started side by side: tests, benchmarks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
