"""Unit checks of the local stack's adapters (the pipeline tests exercise them end to end)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import moto
import pytest
from botocore.exceptions import ClientError

from infra import resources
from infra.local import lambda_runtime
from infra.local.emulator import events, firehose, lambda_invoke, patches, stepfunctions
from infra.local.emulator import server as emulator_server
from infra.local.emulator.process import http_ok
from infra.local.processes import SINGLE_THREADED_MATH, free_port
from infra.local.stack import child_env, isolated_settings, process_specs


def test_pinned_to_the_moto_version_it_was_checked_against(monkeypatch: pytest.MonkeyPatch) -> None:
    assert moto.__version__ == patches.MOTO_VERSION
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"targets moto 5\.2\.5"):
        patches._check_version()


def test_firehose_prefix_expands_like_firehose() -> None:
    when = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    assert firehose._expand_prefix(resources.TELEMETRY_PREFIX, when) == "telemetry/year=2026/month=03/day=07/"


def test_input_transformer_gives_bucket_and_key() -> None:
    target = {
        "InputTransformer": {
            "InputPathsMap": resources.MANIFEST_INPUT_PATHS,
            "InputTemplate": resources.MANIFEST_INPUT_TEMPLATE,
        }
    }
    event = {"detail": {"bucket": {"name": "images"}, "object": {"key": "manifests/t/1.2/r.json"}}}
    assert events._transform(target, event) == {"bucket": "images", "key": "manifests/t/1.2/r.json"}


def test_runtime_reports_exceptions_as_lambda_does() -> None:
    answer = lambda_runtime.invoke("worker.stages.main.start_pipeline", {"bucket": "b"})
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
    argv = [sys.executable, "-m", "infra.local.emulator", "--host", "127.0.0.1", "--port", str(port)]
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


def test_an_unreachable_lambda_runtime_is_a_lambda_service_error(emulator: str) -> None:
    """``lambda:invoke`` tasks go to the Lambda backend directly (no HTTP request from the emulator to itself).
    A runtime that cannot be reached is a Lambda service error, as on AWS: the Invoke API answers 500
    ``ServiceException``, and a task fails with ``Lambda.ServiceException``, which the pipeline retries."""
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
        Handler="worker.stages.main.validate_metadata",
        Code={"ZipFile": buffer.getvalue()},
    )["FunctionArn"]
    output = _caught_lambda_task(sfn, "lambda-direct", fn, "Lambda.ServiceException", {"k": 1})
    assert output["k"] == 1
    assert output["error"]["Error"] == "Lambda.ServiceException"
    assert "local Lambda runtime unreachable" in output["error"]["Cause"]
    with pytest.raises(ClientError) as caught:
        lam.invoke(FunctionName="unreachable", Payload=b"{}")
    assert caught.value.response["Error"]["Code"] == "ServiceException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def _answer(handler: BaseHTTPRequestHandler, body: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _ClosingWhenIdle(BaseHTTPRequestHandler):
    """Keep-alive, but closes a connection idle for 0.2 s, as the local Lambda runtime does after 120 s."""

    protocol_version = "HTTP/1.1"
    timeout = 0.2
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        _answer(self, self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_runtime_connections_are_reused_and_replaced_when_the_runtime_closed_them() -> None:
    pool = lambda_invoke._RuntimeConnections()
    with _serving(_ClosingWhenIdle) as base:
        url = f"{base}/invoke"
        try:
            results: list[tuple[int, bytes]] = []
            workers = [
                threading.Thread(target=lambda i=i: results.append(pool.post(url, f"call {i}".encode(), 5.0)))
                for i in range(4)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            assert sorted(results) == [(200, f"call {i}".encode()) for i in range(4)]
            assert 1 <= len(pool._idle) <= 4
            assert pool.post(url, b"again", 5.0) == (200, b"again")  # reused at once
            time.sleep(0.6)  # the server has closed every idle connection; the pool still holds them
            assert pool._idle
            # one stale try, then a new connection
            assert pool.post(url, b"after idle", 5.0) == (200, b"after idle")
        finally:
            pool.close()


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


def test_step_functions_tasks_share_one_in_process_client_per_service() -> None:
    """Every task passes credentials (the execution's role at least); they must not defeat the cache, and the
    client reaches this process's moto backends without HTTP."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.credentials import StateCredentials

    boto_client_for = stepfunctions._cached_client_factory()
    role = StateCredentials(role_arn="arn:aws:iam::123456789012:role/sfn")
    sqs = boto_client_for(region="eu-west-1", service="sqs", state_credentials=role)
    assert boto_client_for(region="eu-west-1", service="sqs", state_credentials=None) is sqs
    assert boto_client_for(region="us-east-1", service="sqs", state_credentials=role) is not sqs
    url = sqs.create_queue(QueueName="in-process-check")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    assert "in-process-check" in sqs_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"].queues
    assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "hello"


def test_concurrent_put_records_lose_nothing(emulator: str) -> None:
    """The gateway, the worker and every Lambda stage write telemetry at once; each record must arrive."""
    _client("kinesis", emulator).create_stream(StreamName="concurrent", ShardCount=1)
    threads, calls, per_call = 8, 40, 5

    def writer(t: int) -> None:
        kinesis = _client("kinesis", emulator)
        for c in range(calls):
            records = [{"Data": f"{t}-{c}-{r}".encode(), "PartitionKey": "k"} for r in range(per_call)]
            assert kinesis.put_records(StreamName="concurrent", Records=records)["FailedRecordCount"] == 0

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    kinesis = _client("kinesis", emulator)
    shard = kinesis.list_shards(StreamName="concurrent")["Shards"][0]["ShardId"]
    iterator = kinesis.get_shard_iterator(StreamName="concurrent", ShardId=shard, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    seen: list[bytes] = []
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
        seen.extend(record["Data"] for record in page["Records"])
        iterator = page["NextShardIterator"]
        if not page["Records"]:
            break
    expected = {f"{t}-{c}-{r}".encode() for t in range(threads) for c in range(calls) for r in range(per_call)}
    assert len(seen) == len(expected)
    assert set(seen) == expected


def test_runtime_answers_a_result_it_cannot_serialise_as_lambda_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(lambda_runtime._HANDLERS, "worker.stages.main.unserialisable", lambda event, context: {1, 2})
    error = lambda_runtime.invoke("worker.stages.main.unserialisable", {})["error"]
    assert error["errorType"] == "Runtime.MarshalError"
    assert "Unable to marshal response" in error["errorMessage"]


class _Runtime(BaseHTTPRequestHandler):
    """A local Lambda runtime stand-in: counts requests; ``/slow`` answers after 1 s, ``/drop`` never answers."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(self.path)
        if self.path == "/drop":
            self.close_connection = True
            return
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        _answer(self, json.dumps({"result": {"ok": True}}).encode())

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def runtime_stand_in() -> Iterator[str]:
    _Runtime.seen = []
    with _serving(_Runtime) as base:
        yield base


def test_a_request_the_runtime_may_have_run_is_never_sent_twice(runtime_stand_in: str) -> None:
    pool = lambda_invoke._RuntimeConnections()
    try:
        assert pool.post(f"{runtime_stand_in}/ok", b"{}", 5.0)[0] == 200  # leaves a pooled connection
        with pytest.raises(http.client.RemoteDisconnected):
            pool.post(f"{runtime_stand_in}/drop", b"{}", 5.0)  # received, then no answer
        assert _Runtime.seen == ["/ok", "/drop"]
    finally:
        pool.close()


def test_a_handler_past_its_timeout_is_a_function_error(runtime_stand_in: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSTREAM_LAMBDA_RUNTIME_URL", f"{runtime_stand_in}/slow")
    function = SimpleNamespace(handler="worker.stages.main.validate_metadata", timeout=0.3)
    pool = lambda_invoke._RuntimeConnections()
    monkeypatch.setattr(lambda_invoke, "_RUNTIME", pool)
    try:
        payload, errored, _logs = lambda_invoke._invoke_remote(function, {})
    finally:
        pool.close()
    assert errored
    assert json.loads(payload) == {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 0.30 seconds"}


def _keep_alive_server(app: Any) -> Iterator[int]:
    server = emulator_server.EmulatorServer("127.0.0.1", 0, app=app)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def _test_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    path = environ["PATH_INFO"]
    if path == "/partial":
        start_response("200 OK", [("Content-Length", "10")])
        yield b"12345"
        raise RuntimeError("failed half way")
    # never reads the request body: the handler must drain it before the next request
    body = f"answer to {environ['REQUEST_METHOD']} {path}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    yield body


@pytest.fixture
def keep_alive_port() -> Iterator[int]:
    yield from _keep_alive_server(_test_app)


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_emulator_keeps_connections_and_drains_unread_bodies(keep_alive_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", keep_alive_port, timeout=5)
    try:
        answers = []
        for i, body in enumerate((b"x" * 100_000, b"", b"y" * 10)):
            conn.request("PUT", f"/object-{i}", body=body)
            if i == 0:
                first_socket = conn.sock
            response = conn.getresponse()
            answers.append(response.read())
            assert not response.will_close
        assert answers == [f"answer to PUT /object-{i}".encode() for i in range(3)]
        assert conn.sock is first_socket  # one connection for the three requests
    finally:
        conn.close()


def test_emulator_closes_after_a_request_rejected_before_the_application(keep_alive_port: int) -> None:
    with socket.create_connection(("127.0.0.1", keep_alive_port)) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"answer to GET /ok" not in first:
            first += sock.recv(65536)
        # a header line past http.server's 64 KiB limit: answered 431 without the application
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        rest = _read_until_closed(sock)
    assert rest.startswith(b"HTTP/1.1 431")
    assert b"Connection: close" in rest
    assert rest.count(b"HTTP/1.") == 1  # and nothing of the rejected request read as another one


def test_emulator_closes_after_an_application_failed_mid_response(keep_alive_port: int) -> None:
    with socket.create_connection(("127.0.0.1", keep_alive_port)) as sock:
        sock.sendall(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
        received = _read_until_closed(sock)  # the server closes: the client sees a short body, not a desync
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\n12345")


def test_an_idle_kept_alive_connection_ends_quietly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(emulator_server, "KEEP_ALIVE_IDLE_S", 0.3)
    for port in _keep_alive_server(_test_app):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            received = _read_until_closed(sock)  # answered, then closed by the server once idle
        assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"answer to GET /ok")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
