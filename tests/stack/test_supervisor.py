"""The supervisor's error when a child dies before it is ready names the cause, not only the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from infra.local.processes import ProcessSpec
from infra.local.supervisor import LOG_TAIL_LINES, ChildFailed, Supervisor

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
