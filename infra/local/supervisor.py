"""Start child processes in order, wait for each to be ready, stop them all on a signal or a death."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from infra.local.processes import ProcessSpec

log = logging.getLogger("radstream.supervisor")


class ChildFailed(RuntimeError):
    pass


LOG_TAIL_LINES = 20


def _log_tail(spec: ProcessSpec) -> str:
    """The end of a child's log, for the error that says it failed (its output went to the file, not here)."""
    if spec.log_path is None:
        return ""
    try:
        lines = spec.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    if not lines:
        return f" ({spec.log_path} is empty)"
    return f"; the end of {spec.log_path}:\n" + "\n".join(lines)


class Supervisor:
    """Owns the children it started; ``stop`` ends them newest first (SIGTERM, then SIGKILL)."""

    def __init__(self, stop_timeout_s: float = 10.0) -> None:
        self.children: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
        self._stop_timeout_s = stop_timeout_s

    def start(self, spec: ProcessSpec) -> subprocess.Popen[bytes]:
        log.info("starting %s: %s", spec.name, " ".join(spec.argv))
        if spec.log_path is not None:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with spec.log_path.open("ab") as out:
                proc = subprocess.Popen(
                    spec.argv, env=spec.env or None, cwd=spec.cwd, start_new_session=True, stdout=out, stderr=out
                )
        else:
            proc = subprocess.Popen(spec.argv, env=spec.env or None, cwd=spec.cwd, start_new_session=True)
        self.children.append((spec, proc))
        if spec.ready is not None:
            deadline = time.monotonic() + spec.ready_timeout_s
            while not spec.ready():
                if proc.poll() is not None:
                    raise ChildFailed(
                        f"{spec.name} exited with code {proc.returncode} before it was ready{_log_tail(spec)}"
                    )
                if time.monotonic() > deadline:
                    raise ChildFailed(f"{spec.name} was not ready within {spec.ready_timeout_s:.0f} s{_log_tail(spec)}")
                time.sleep(0.1)
        log.info("%s ready (pid %d)", spec.name, proc.pid)
        return proc

    def wait(self, should_stop: Callable[[], bool]) -> int:
        """Block until a signal asked to stop (0), the parent went away (0), or a child died (1).

        The parent check covers `make up` being terminated: make does not pass SIGTERM on to its recipe.
        """
        parent = os.getppid()
        while not should_stop():
            if os.getppid() != parent:
                log.warning("parent process %d went away; stopping the stack", parent)
                return 0
            for spec, proc in self.children:
                if proc.poll() is not None:
                    log.error("%s exited with code %s; stopping the stack", spec.name, proc.returncode)
                    return 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for spec, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self._stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s; killing it", spec.name, self._stop_timeout_s)
                    proc.kill()
                    proc.wait()
        self.children.clear()


class StopFlag:
    """Set by SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested
