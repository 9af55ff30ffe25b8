"""Every Amazon States Language file passes statelint and routes every failure to MarkFailed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _states(states: dict[str, Any]) -> dict[str, Any]:
    """Every state, those inside Map states included."""
    found = dict(states)
    for state in states.values():
        if "ItemProcessor" in state:
            found |= _states(state["ItemProcessor"]["States"])
    return found


@pytest.mark.parametrize("path", STATEMACHINES, ids=lambda p: p.name)
def test_every_lambda_task_retries_transient_errors_with_backoff(path: Path) -> None:
    # worker/stages/main.py raises every storage outage (StorageUnavailable) as TransientError
    states = _states(json.loads(path.read_text())["States"])
    lambdas = {name: s for name, s in states.items() if s.get("Resource") == "arn:aws:states:::lambda:invoke"}
    assert {"ValidateMetadata", "Prepare", "StoreResults", "MarkFailed"} <= set(lambdas)
    for name, state in lambdas.items():
        (retrier,) = [r for r in state["Retry"] if "TransientError" in r["ErrorEquals"]]
        assert retrier["MaxAttempts"] >= 3 and retrier["BackoffRate"] > 1, name


@pytest.mark.parametrize("path", STATEMACHINES, ids=lambda p: p.name)
def test_mark_failed_retries_any_error_a_bounded_number_of_times(path: Path) -> None:
    mark_failed = json.loads(path.read_text())["States"]["MarkFailed"]
    last = mark_failed["Retry"][-1]
    assert last["ErrorEquals"] == ["States.ALL"]
    assert 1 <= last["MaxAttempts"] <= 5 and last["BackoffRate"] > 1


@pytest.mark.parametrize("path", STATEMACHINES, ids=lambda p: p.name)
def test_states_all_stands_alone_and_last(path: Path) -> None:
    # Step Functions refuses a definition otherwise; statelint does not check it
    for name, state in _states(json.loads(path.read_text())["States"]).items():
        for rules in (state.get("Retry", []), state.get("Catch", [])):
            for i, rule in enumerate(rules):
                if "States.ALL" in rule["ErrorEquals"]:
                    assert rule["ErrorEquals"] == ["States.ALL"] and i == len(rules) - 1, name


def test_the_inference_heartbeat_outlasts_the_worker_retry_cycle_and_fits_the_timeout() -> None:
    """RunInference's heartbeat clock also runs while the message waits in the queue or between a worker's
    attempts (Triton down: the message is left for redelivery), so it must outlast the worker's whole
    retry budget, and it must be shorter than the task's timeout to mean anything."""
    from radstream.settings import Settings

    path = next(p for p in STATEMACHINES if p.name == "pipeline.asl.json")
    state = json.loads(path.read_text())["States"]["RunInference"]
    settings = Settings()
    retry_cycle_s = settings.worker_max_attempts * settings.worker_visibility_timeout_s
    assert 2 * retry_cycle_s < state["HeartbeatSeconds"] < state["TimeoutSeconds"]
