"""Start child processes in order, wait for each to be ready, stop them all on a signal or a death."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from infra.local.errors import ChildFailed, Interrupted
from infra.local.processes import ProcessSpec

log = logging.getLogger("radstream.supervisor")


LOG_TAIL_LINES = 20


def _log_tail(spec: ProcessSpec, offset: int = 0) -> str:
    """The end of what a child wrote to its log since it started (from ``offset``: the log is appended to
    by every run), for the error that says it failed."""
    if spec.log_path is None:
        return ""
    try:
        with spec.log_path.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    if not lines:
        return f" (nothing in {spec.log_path} from this start)"
    return f"; the end of {spec.log_path}:\n" + "\n".join(lines)


class Supervisor:
    """Owns the children it started; ``stop`` ends them newest first (SIGTERM, then SIGKILL)."""

    def __init__(self, stop_timeout_s: float = 10.0) -> None:
        self.children: list[tuple[ProcessSpec, subprocess.Popen[bytes]]] = []
        self._offsets: dict[int, int] = {}  # pid -> where its log stood when it started
        self._stop_timeout_s = stop_timeout_s

    def start(self, spec: ProcessSpec, should_stop: Callable[[], bool] | None = None) -> subprocess.Popen[bytes]:
        """Start ``spec`` and wait until it is ready. ChildFailed when it (or a child started before it) exits
        or it is not ready in time; Interrupted when ``should_stop`` says so meanwhile. Either way the child
        stays among ``children``, so ``stop`` ends it."""
        log.info("starting %s: %s", spec.name, " ".join(spec.argv))
        offset = 0
        if spec.log_path is not None:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            with spec.log_path.open("ab") as out:
                offset = out.tell()
                proc = subprocess.Popen(
                    spec.argv, env=spec.env or None, cwd=spec.cwd, start_new_session=True, stdout=out, stderr=out
                )
        else:
            proc = subprocess.Popen(spec.argv, env=spec.env or None, cwd=spec.cwd, start_new_session=True)
        self.children.append((spec, proc))
        self._offsets[proc.pid] = offset
        if spec.ready is not None:
            deadline = time.monotonic() + spec.ready_timeout_s
            while not spec.ready():
                if proc.poll() is not None:
                    raise ChildFailed(
                        f"{spec.name} exited with code {proc.returncode} before it was ready{_log_tail(spec, offset)}"
                    )
                if (earlier := self._exited(other_than=proc)) is not None:
                    raise ChildFailed(earlier)
                if should_stop is not None and should_stop():
                    raise Interrupted(f"stopped while {spec.name} was starting")
                if time.monotonic() > deadline:
                    raise ChildFailed(
                        f"{spec.name} was not ready within {spec.ready_timeout_s:.0f} s{_log_tail(spec, offset)}"
                    )
                time.sleep(0.1)
        log.info("%s ready (pid %d)", spec.name, proc.pid)
        return proc

    def _exited(self, other_than: subprocess.Popen[bytes] | None = None) -> str | None:
        """What the first child that has exited (other than ``other_than``) says: its name, exit code and the
        end of its log since it started; None while every one runs."""
        for spec, proc in self.children:
            if proc is not other_than and proc.poll() is not None:
                tail = _log_tail(spec, self._offsets.get(proc.pid, 0))
                return f"{spec.name} exited with code {proc.returncode}{tail}"
        return None

    def wait(self, should_stop: Callable[[], bool]) -> int:
        """Block until a signal asked to stop (0), the parent went away (0), or a child died (1).

        The parent check covers `make up` being terminated: make does not pass SIGTERM on to its recipe.
        """
        parent = os.getppid()
        while not should_stop():
            if os.getppid() != parent:
                log.warning("parent process %d went away; stopping the stack", parent)
                return 0
            if (exited := self._exited()) is not None:
                log.error("%s\nstopping the stack", exited)
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
    """Set by SIGINT, SIGTERM and SIGHUP (the terminal closed, an SSH session lost): every child is stopped."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGHUP, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested
