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


def test_the_inference_task_outlasts_the_worker_outage_budget_and_retries_a_lost_heartbeat() -> None:
    """A worker waiting out an outage holds the message and heartbeats: the task's timeout must outlast the
    whole budget; the heartbeat clock also runs while a message waits in the queue, and its timeout sends
    the message again instead of failing the study."""
    from radstream.settings import Settings

    path = next(p for p in STATEMACHINES if p.name == "pipeline.asl.json")
    state = json.loads(path.read_text())["States"]["RunInference"]
    settings = Settings()
    assert settings.worker_outage_budget_s == 900  # the default: 15 minutes
    assert settings.worker_visibility_timeout_s < state["HeartbeatSeconds"]
    assert 2 * settings.worker_outage_budget_s < state["TimeoutSeconds"]
    (heartbeat,) = [r for r in state["Retry"] if "States.HeartbeatTimeout" in r["ErrorEquals"]]
    assert heartbeat["MaxAttempts"] >= 1


def test_retry_budgets_are_minutes_and_timeouts_are_retried() -> None:
    """Transient faults are retried with backoff for minutes, not seconds; a stage that timed out or ran out
    of memory is retried (every stage is idempotent); States.DataLimitExceeded is caught by name."""
    path = next(p for p in STATEMACHINES if p.name == "pipeline.asl.json")
    states = json.loads(path.read_text())["States"]
    tasks = {"Prepare": states["PrepareTensors"]["ItemProcessor"]["States"]["Prepare"]}
    tasks |= {n: s for n, s in states.items() if s["Type"] == "Task" and n not in ("RunInference", "MarkFailed")}
    for name, state in tasks.items():
        (transient,) = [r for r in state["Retry"] if "TransientError" in r["ErrorEquals"]]
        budget, delay = 0.0, float(transient["IntervalSeconds"])
        for _ in range(transient["MaxAttempts"]):
            budget += min(delay, transient.get("MaxDelaySeconds", delay))
            delay *= transient["BackoffRate"]
        assert budget >= 180, (name, budget)
        (timeouts,) = [r for r in state["Retry"] if "Sandbox.Timedout" in r["ErrorEquals"]]
        assert {"States.Timeout", "Runtime.OutOfMemory"} <= set(timeouts["ErrorEquals"]), name
    for name, state in states.items():
        if "Catch" in state:
            caught = [e for rule in state["Catch"] for e in rule["ErrorEquals"]]
            assert "States.DataLimitExceeded" in caught, name
