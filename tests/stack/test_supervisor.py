"""The supervisor: a child that dies before it is ready is reported with the cause (its log since it started), a
child started earlier that dies meanwhile is named, and a stop asked for during a start ends the wait."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from infra.local.errors import ChildFailed, Interrupted
from infra.local.processes import ProcessSpec
from infra.local.supervisor import LOG_TAIL_LINES, Supervisor

CRASH = "import sys\nfor i in range(40): print(f'line {i}')\nraise SystemExit('ModuleNotFoundError: no module named fastapi')"


def test_a_child_that_dies_before_ready_is_reported_with_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "gateway.log"
    spec = ProcessSpec(
        name="gateway", argv=[sys.executable, "-c", CRASH], ready=lambda: False, ready_timeout_s=30, log_path=log
    )
    supervisor = Supervisor()
    with pytest.raises(ChildFailed) as failed:
        supervisor.start(spec)
    supervisor.stop()
    message = str(failed.value)
    assert message.startswith("gateway exited with code 1 before it was ready; the end of ")
    assert "no module named fastapi" in message
    assert f"line {40 - LOG_TAIL_LINES + 1}" in message  # the last lines, and no more
    assert f"line {40 - LOG_TAIL_LINES}\n" not in message


def test_a_child_that_is_never_ready_is_reported_with_its_log_and_stopped(tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    code = "import time\nprint('waiting for a database', flush=True)\ntime.sleep(60)"
    spec = ProcessSpec(
        name="slow", argv=[sys.executable, "-c", code], ready=lambda: False, ready_timeout_s=1.5, log_path=log
    )
    supervisor = Supervisor()
    with pytest.raises(ChildFailed, match=r"slow was not ready within 2 s; the end of .*\nwaiting for a database"):
        supervisor.start(spec)
    proc = supervisor.children[0][1]
    supervisor.stop()
    assert proc.poll() is not None


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _sleeper(name: str, tmp_path: Path, **kwargs: object) -> ProcessSpec:
    code = f"import time\nprint('{name} here', flush=True)\ntime.sleep(60)"
    return ProcessSpec(name=name, argv=[sys.executable, "-c", code], log_path=tmp_path / f"{name}.log", **kwargs)  # type: ignore[arg-type]


def test_a_child_started_earlier_that_dies_during_a_later_start_is_named(tmp_path: Path) -> None:
    supervisor = Supervisor()
    emulator = supervisor.start(
        _sleeper("emulator", tmp_path, ready=lambda: "here" in _text(tmp_path / "emulator.log"))
    )
    try:
        emulator.kill()
        with pytest.raises(ChildFailed, match=r"^emulator exited with code -9; the end of .*\nemulator here"):
            supervisor.start(_sleeper("triton", tmp_path, ready=lambda: False, ready_timeout_s=30))
    finally:
        supervisor.stop()


def test_a_stop_asked_for_during_a_start_ends_the_wait(tmp_path: Path) -> None:
    supervisor = Supervisor()
    try:
        with pytest.raises(Interrupted, match="while triton was starting"):
            supervisor.start(_sleeper("triton", tmp_path, ready=lambda: False, ready_timeout_s=30), lambda: True)
        (_, proc), *_ = supervisor.children
    finally:
        supervisor.stop()
    assert proc.poll() is not None


def test_the_log_tail_is_only_this_start(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text("Traceback of an earlier run\nDockerException: not this one\n")
    spec = ProcessSpec(
        name="gateway",
        argv=[sys.executable, "-c", "raise SystemExit('port in use')"],
        ready=lambda: False,
        log_path=log,
    )
    supervisor = Supervisor()
    with pytest.raises(ChildFailed) as failed:
        supervisor.start(spec)
    supervisor.stop()
    assert "port in use" in str(failed.value) and "earlier run" not in str(failed.value)
