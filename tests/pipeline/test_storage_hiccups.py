"""Storage that does not answer for a moment (an S3 503, a DynamoDB 5xx or throttling) is retried by the
state machine in every Lambda state, MarkFailed included, instead of failing the study at once."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pydicom
import pytest

from cli.send import SendReport
from cli.send import send as send_folder
from infra import resources
from infra.local import lambda_runtime
from loadtest import synthetic
from radstream import keys
from radstream.errors import StorageUnavailable
from radstream.manifest import Manifest
from tests.conftest import KEY_ALPHA
from tests.gateway.stowhelp import stow
from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import ct_study, executions_for, manifests_of, send, wait_execution
from worker.stages import export, mark_failed, prepare, store, validate

ASL = json.loads(resources.STATE_MACHINE_FILE.read_text())
STAGES = {  # the stage function behind each handler the state machine invokes
    "worker.stages.main.validate_metadata": (validate, "run"),
    "worker.stages.main.prepare_tensors": (prepare, "run"),
    "worker.stages.main.store_results": (store, "run"),
    "worker.stages.main.mark_failed": (mark_failed, "run"),
    "worker.stages.main.export_results": (export, "run"),  # an event without "error": the send
}


def lambda_states(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Lambda task state, those inside Map states included."""
    for name, state in states.items():
        if state.get("Resource") == "arn:aws:states:::lambda:invoke":
            yield name, state
        if "ItemProcessor" in state:
            yield from lambda_states(state["ItemProcessor"]["States"])


def retrier_for(state: dict[str, Any], error: str) -> dict[str, Any] | None:
    """The retrier Step Functions applies to ``error``: the first that names it or States.ALL."""
    for retrier in state.get("Retry", []):
        if error in retrier["ErrorEquals"] or "States.ALL" in retrier["ErrorEquals"]:
            return dict(retrier)
    return None


def handler_of(state: dict[str, Any]) -> str:
    substitution = state["Parameters"]["FunctionName"]
    (handler,) = [h for h, arn in resources.LAMBDA_FUNCTIONS.values() if arn and substitution == f"${{{arn}}}"]
    return handler


@pytest.mark.parametrize("name", [name for name, _ in lambda_states(ASL["States"])])
def test_every_lambda_state_retries_what_its_handler_raises_for_unavailable_storage(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = dict(lambda_states(ASL["States"]))[name]
    handler = handler_of(state)
    module, function = STAGES[handler]

    async def hiccup(ctx: object, event: dict[str, Any]) -> dict[str, Any]:
        raise StorageUnavailable("storage unavailable during UpdateItem: ServiceUnavailable")

    monkeypatch.setattr(module, function, hiccup)
    error = lambda_runtime.invoke(handler, {})["error"]  # what Lambda reports to Step Functions
    retrier = retrier_for(state, error["errorType"])
    assert retrier is not None, f"{name} does not retry {error['errorType']}"
    assert retrier["MaxAttempts"] >= 1 and retrier["BackoffRate"] > 1, retrier
    assert "storage unavailable during UpdateItem" in error["errorMessage"]


# ---------------------------------------------------------------------------------- on the embedded stack
@dataclass
class Fault:
    """Answer 503 to the status writes that set ``study`` to ``state``, ``times`` times."""

    study: str
    state: str
    times: int
    served: int = 0

    def matches(self, target: str, body: bytes) -> bool:
        if not target.endswith(".UpdateItem") or self.served >= self.times:
            return False
        try:
            request = json.loads(body)
            study = request["Key"]["sk"]["S"]
            state = request["ExpressionAttributeValues"][":state"]["S"]
        except (ValueError, KeyError, TypeError):
            return False
        return bool(study == self.study and state == self.state)


class FlakyProxy(ThreadingHTTPServer):
    """The emulator behind a proxy that fails the status writes its faults name, and passes the rest."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", int(parts.port or 80))
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.down = False  # every call answered 503, as a store that is away

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, target: str, body: bytes) -> bool:
        with self.lock:
            for fault in self.faults:
                if fault.matches(target, body):
                    fault.served += 1
                    return True
        return False


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FlakyProxy
    _HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "expect"})

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.server.down:
            target = self.headers.get("X-Amz-Target", "")
            data = b'{"__type":"ServiceUnavailable","message":"injected"}' if target else _S3_DOWN
            self.send_response(503)
            self.send_header("Content-Type", "application/x-amz-json-1.0" if target else "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if self.server.inject(self.headers.get("X-Amz-Target", ""), body):
            data = b'{"__type":"com.amazonaws.dynamodb.v20120810#ServiceUnavailable","message":"injected"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in self._HOP or (self.command == "HEAD" and key.lower() == "content-length"):
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def flaky_storage(stack: Stack) -> Iterator[FlakyProxy]:
    """The Lambda runtime reaches AWS through a FlakyProxy for the duration of a test."""
    yield from _behind_proxy(stack, "lambda-runtime")


def _behind_proxy(stack: Stack, process: str, **env: str) -> Iterator[FlakyProxy]:
    """Restart ``process`` to reach AWS through a FlakyProxy (and with ``env``); restart it direct after."""
    assert stack.settings.aws_endpoint_url is not None
    proxy = FlakyProxy(stack.settings.aws_endpoint_url)
    threading.Thread(target=proxy.serve_forever, name=f"{process}-proxy", daemon=True).start()
    try:
        with stack.restarted(process, RADSTREAM_AWS_ENDPOINT_URL=proxy.url, **env):
            yield proxy
    finally:
        proxy.down = False
        proxy.shutdown()
        proxy.server_close()


def scheduled(stack: Stack, study: str, function: str) -> int:
    """How many times the execution of the study's last run invoked the Lambda function ``function``."""
    execution = executions_for(stack, study)[-1]
    history = stack.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    return sum(
        1
        for e in history
        if e["type"] == "TaskScheduled" and f"radstream-{function}" in e["taskScheduledEventDetails"]["parameters"]
    )


def sdk_attempts(stack: Stack) -> int:
    """Tries of one AWS call before the stage sees the error (botocore's ``max_attempts`` counts the retries
    after the first): the fault must outlast them all."""
    return stack.settings.aws_max_attempts + 1


def test_status_writes_failing_once_are_retried_and_the_study_completes(
    stack: Stack, flaky_storage: FlakyProxy
) -> None:
    uids, datasets = ct_study(1)
    attempts = sdk_attempts(stack)
    flaky_storage.faults += [Fault(uids.study, "processing", attempts), Fault(uids.study, "completed", attempts)]
    send(stack, datasets)
    status = stack.wait_status(uids.study, ("completed", "failed"), timeout_s=45)
    assert status["status"] == "completed", status
    assert [f.served for f in flaky_storage.faults] == [attempts, attempts]
    assert wait_execution(stack, uids.study) == "SUCCEEDED"
    assert scheduled(stack, uids.study, "validate-metadata") == 2  # the first try and one retry
    assert scheduled(stack, uids.study, "store-results") == 2


def test_mark_failed_retries_its_status_write(stack: Stack, flaky_storage: FlakyProxy) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed",))
    # then a manifest of the study whose instance does not match its checksum: PrepareTensors fails at once
    data = synthetic.to_bytes(synthetic.ct_slice(uids, 1, rows=64, cols=64))
    ds = pydicom.dcmread(io.BytesIO(data))
    stack.client("s3").put_object(
        Bucket=stack.settings.images_bucket,
        Key=keys.instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID),
        Body=data,
    )
    attempts = sdk_attempts(stack)
    flaky_storage.faults.append(Fault(uids.study, "failed", attempts))
    request_id = "20260101T000000-hiccup000001"
    stack.write_manifest(
        uids.study,
        uids.series,
        request_id,
        sop=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        size=len(data),
        sha256=hashlib.sha256(data + b"changed").hexdigest(),
    )
    status = stack.wait_status(uids.study, ("failed",), timeout_s=45)
    assert status["failure_reason"].startswith("ManifestInvalid: instance"), status
    assert flaky_storage.faults[0].served == attempts
    assert wait_execution(stack, uids.study) == "FAILED"
    assert scheduled(stack, uids.study, "mark-failed") == 2  # the first try and one retry


_S3_DOWN = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
)


STORAGE_OUTAGE_S = 60  # the figure: storage unavailable for 60 s during uploads


@pytest.fixture
def storage_for_the_gateway(stack: Stack) -> Iterator[FlakyProxy]:
    """The gateway reaches AWS through a FlakyProxy (whose ``down`` fails every call) for one test."""
    yield from _behind_proxy(stack, "gateway", RADSTREAM_STORAGE_RETRY_AFTER_S="1")


@pytest.mark.slow
def test_storage_away_during_uploads_503_then_every_instance_stored_once_after_the_resend(
    stack: Stack, storage_for_the_gateway: FlakyProxy, tmp_path: Path
) -> None:
    """The store stops answering (every call 503) for 60 s while ``radstream send`` uploads 40 slices in requests of 10:
    the gateway answers 503 with Retry-After, the sender waits and sends again, and once the store is back
    every instance is stored, listed in exactly one manifest, and inferred once, in one result."""
    uids, datasets = ct_study(40, rows=32)
    for i, ds in enumerate(datasets):
        ds.save_as(tmp_path / f"{i:03}.dcm", enforce_file_format=True)
    proxy = storage_for_the_gateway
    proxy.down = True
    refused = stow(stack.url, stack.auth, [synthetic.to_bytes(datasets[0])])
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
    assert refused.json()["00081198"]["Value"]  # the instance is answered as failed, none as stored

    async def upload() -> SendReport:
        sending = asyncio.create_task(send_folder([tmp_path], url=stack.url, api_key=KEY_ALPHA, retries=60))
        await asyncio.sleep(STORAGE_OUTAGE_S)  # the outage, seen by every request of the first round
        proxy.down = False
        return await sending

    report = asyncio.run(upload())
    assert report.stored == 40 and report.failed == 0, report.failures
    assert report.retries >= 4, report  # each of the first four requests was refused at least once
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed", status
    document = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth, timeout=30).json()
    sops = [i["sop_instance_uid"] for i in document["instances"]]
    assert sorted(sops) == sorted(ds.SOPInstanceUID for ds in datasets)
    s3 = stack.client("s3")
    listed: list[str] = []
    for key in manifests_of(stack, uids.study):
        body = s3.get_object(Bucket=stack.settings.images_bucket, Key=key)["Body"].read()
        listed += [i.sop_instance_uid for i in Manifest.model_validate_json(body).instances]
    assert sorted(listed) == sorted(sops)  # claimed once each: none processed twice
