"""Unit checks of the local stack's adapters (the pipeline tests exercise them end to end)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest

from infra import resources
from infra.local import lambda_runtime, moto_gaps
from infra.local.emulator import http_ok
from infra.local.processes import SINGLE_THREADED_MATH, free_port
from infra.local.stack import child_env, isolated_settings, process_specs


def test_pinned_to_the_moto_version_it_was_checked_against(monkeypatch: pytest.MonkeyPatch) -> None:
    assert moto.__version__ == moto_gaps.MOTO_VERSION
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"targets moto 5\.2\.5"):
        moto_gaps._check_version()


def test_firehose_prefix_expands_like_firehose() -> None:
    when = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    assert moto_gaps._expand_prefix(resources.TELEMETRY_PREFIX, when) == "telemetry/year=2026/month=03/day=07/"


def test_input_transformer_gives_bucket_and_key() -> None:
    target = {
        "InputTransformer": {
            "InputPathsMap": resources.MANIFEST_INPUT_PATHS,
            "InputTemplate": resources.MANIFEST_INPUT_TEMPLATE,
        }
    }
    event = {"detail": {"bucket": {"name": "images"}, "object": {"key": "manifests/t/1.2/r.json"}}}
    assert moto_gaps._transform(target, event) == {"bucket": "images", "key": "manifests/t/1.2/r.json"}


def test_runtime_reports_exceptions_as_lambda_does() -> None:
    answer = lambda_runtime.invoke("worker.lambdas.start_pipeline", {"bucket": "b"})
    assert answer["error"]["errorType"] == "ManifestInvalid"
    assert "no object key" in answer["error"]["errorMessage"]


def test_runtime_runs_only_our_handlers() -> None:
    answer = lambda_runtime.invoke("os.system", {})
    assert answer["error"]["errorType"] == "HandlerNotAllowed"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """The emulator process alone (moto + the local gaps) on a free loopback port."""
    port = free_port()
    env = {**os.environ, "MOTO_PORT": str(port), "AWS_DEFAULT_REGION": "us-east-1"}
    env["RADSTREAM_LAMBDA_RUNTIME_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = [sys.executable, "-m", "infra.local.moto_gaps", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"{url}/moto-api/data.json"):
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )


# Retry counters and Map iterations keep their state per execution; the parsed program is shared.
_SHARED_PROGRAM_ASL = {
    "StartAt": "Fan",
    "States": {
        "Fan": {
            "Type": "Map",
            "ItemsPath": "$.items",
            "MaxConcurrency": 2,
            "ItemProcessor": {
                "StartAt": "Tag",
                "States": {
                    "Tag": {"Type": "Pass", "Parameters": {"value.$": "$", "tag": "seen"}, "End": True},
                },
            },
            "ResultPath": "$.fanned",
            "Next": "Send",
        },
        "Send": {
            "Type": "Task",
            "Resource": "arn:aws:states:::sqs:sendMessage",
            "Parameters": {"QueueUrl": "http://127.0.0.1:1/000000000000/missing", "MessageBody.$": "$.name"},
            "Retry": [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 2, "IntervalSeconds": 1, "BackoffRate": 1.0}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done"}],
            "End": True,
        },
        "Done": {"Type": "Pass", "Parameters": {"name.$": "$.name", "fanned.$": "$.fanned"}, "End": True},
    },
}


def test_concurrent_executions_of_one_definition_stay_separate(emulator: str) -> None:
    sfn = _client("stepfunctions", emulator)
    arn = sfn.create_state_machine(
        name="shared-program",
        definition=json.dumps(_SHARED_PROGRAM_ASL),
        roleArn="arn:aws:iam::123456789012:role/sfn",
    )["stateMachineArn"]
    inputs = {f"run-{i}": list(range(i + 1)) for i in range(6)}
    executions = {
        name: sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps({"name": name, "items": items}))[
            "executionArn"
        ]
        for name, items in inputs.items()
    }
    deadline = time.monotonic() + 60
    outputs: dict[str, Any] = {}
    while len(outputs) < len(executions) and time.monotonic() < deadline:
        for name, execution in executions.items():
            described = sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                assert described["status"] == "SUCCEEDED", described
                outputs[name] = json.loads(described["output"])
        time.sleep(0.2)
    assert set(outputs) == set(inputs)
    for name, items in inputs.items():
        assert outputs[name] == {"name": name, "fanned": [{"value": i, "tag": "seen"} for i in items]}
    # Each execution retried its failing task itself: 1 attempt + 2 retries, whatever the others did.
    for execution in executions.values():
        history = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
        attempts = [e for e in history if e["type"] == "TaskScheduled"]
        assert len(attempts) == 3


def _caught_lambda_task(sfn: Any, machine: str, function: str, error: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run a one-task state machine that invokes ``function`` and catches ``error`` into ``$.error``; the
    execution must succeed (only through that Catch). Returns its output."""
    definition = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": function, "Payload.$": "$"},
                "Catch": [{"ErrorEquals": [error], "ResultPath": "$.error", "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "End": True},
        },
    }
    arn = sfn.create_state_machine(
        name=machine, definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/sfn"
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=arn, name=f"{machine}-1", input=json.dumps(payload))["executionArn"]
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert described["status"] == "SUCCEEDED", sfn.get_execution_history(executionArn=execution)["events"][-3:]
    output: dict[str, Any] = json.loads(described["output"])
    return output


def test_lambda_task_failures_reach_catch(emulator: str) -> None:
    """``lambda:invoke`` tasks go to the Lambda backend directly (no HTTP request from the emulator to itself);
    a failure still comes back as the task's typed error, which Catch matches by name."""
    sfn = _client("stepfunctions", emulator)
    lam = _client("lambda", emulator)
    iam = _client("iam", emulator)
    role = iam.create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    fn = lam.create_function(
        FunctionName="unreachable",
        Runtime="python3.11",
        Role=role,
        Handler="worker.lambdas.validate_metadata",
        Code={"ZipFile": buffer.getvalue()},
    )["FunctionArn"]
    output = _caught_lambda_task(sfn, "lambda-direct", fn, "ServiceException", {"k": 1})
    assert output["k"] == 1
    assert output["error"]["Error"] == "ServiceException"
    assert "local Lambda runtime unreachable" in output["error"]["Cause"]


def test_image_resizing_processes_run_blas_single_threaded(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, "t:k")
    specs = {spec.name: spec for spec in process_specs(settings, child_env(settings, "t:k"))}
    for name in ("lambda-runtime", "worker"):
        for key, value in SINGLE_THREADED_MATH.items():
            assert specs[name].env[key] == value, (name, key)


def test_a_missing_lambda_function_fails_the_task_with_its_aws_error_name(emulator: str) -> None:
    """As through the Lambda API: the task fails with ``Lambda.ResourceNotFoundException``, which Catch matches."""
    sfn = _client("stepfunctions", emulator)
    missing = "arn:aws:lambda:us-east-1:123456789012:function:no-such-function"
    error = _caught_lambda_task(sfn, "lambda-missing", missing, "Lambda.ResourceNotFoundException", {})["error"]
    assert error["Error"] == "Lambda.ResourceNotFoundException"
    assert "no-such-function" in error["Cause"]
