"""Every Amazon States Language file passes statelint and routes every failure to MarkFailed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.conftest import STATEMACHINES, Tools


def test_there_is_a_state_machine() -> None:
    assert STATEMACHINES


@pytest.mark.parametrize("path", STATEMACHINES, ids=lambda p: p.name)
def test_statelint(tools: Tools, path: Path) -> None:
    tools.check("statelint", path)


@pytest.mark.parametrize("path", STATEMACHINES, ids=lambda p: p.name)
def test_every_task_but_mark_failed_catches_into_mark_failed(path: Path) -> None:
    states = json.loads(path.read_text())["States"]
    tasks = {name: s for name, s in states.items() if s["Type"] == "Task"}
    assert "MarkFailed" in tasks
    assert any(s["Resource"] == "arn:aws:states:::sqs:sendMessage.waitForTaskToken" for s in tasks.values())
    for name, state in tasks.items():
        if name == "MarkFailed":
            continue
        assert state["Retry"], name
        assert any(c["Next"] == "MarkFailed" and "States.ALL" in c["ErrorEquals"] for c in state["Catch"]), name
