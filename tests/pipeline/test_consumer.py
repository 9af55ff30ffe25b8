"""The inference worker's message handling against fakes of SQS, Step Functions, S3 and the batcher: the
failure paths the embedded stack cannot produce on demand (an unexpected error, a failed delete, a task
closed under the worker) and the bounds on the work of one message."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from radstream.aws import sqs, stepfunctions
from radstream.errors import NotFound
from radstream.settings import PROJECT_ROOT, Settings
from radstream.telemetry import TelemetryEvent
from worker.formats import prepared as prepared_codec
from worker.inference.batcher import ItemResult
from worker.inference.consumer import InferenceWorker
from worker.models.spec import ModelSpec, load_specs

MODEL = "lesion_detector"
GUARD_S = 20.0  # only so that a broken worker fails the test instead of hanging it


def aws_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class FakeSqs:
    def __init__(self) -> None:
        self.deleted: list[str] = []
        self.visibility: list[int] = []
        self.fail_delete: Exception | None = None
        self.fail_visibility: Exception | None = None

    async def delete_message(self, *, QueueUrl: str, ReceiptHandle: str) -> None:
        if self.fail_delete is not None:
            raise self.fail_delete
        self.deleted.append(ReceiptHandle)

    async def change_message_visibility(self, *, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        if self.fail_visibility is not None:
            raise self.fail_visibility
        self.visibility.append(VisibilityTimeout)


class FakeSfn:
    def __init__(self) -> None:
        self.successes: list[dict[str, Any]] = []
        self.failures: list[tuple[str, str]] = []
        self.heartbeats = 0
        self.heartbeat_error: Exception | None = None
        self.success_error: Exception | None = None
        self.heartbeat_seen = asyncio.Event()

    async def send_task_success(self, *, taskToken: str, output: str) -> None:
        if self.success_error is not None:
            raise self.success_error
        self.successes.append(json.loads(output))

    async def send_task_failure(self, *, taskToken: str, error: str, cause: str) -> None:
        self.failures.append((error, cause))

    async def send_task_heartbeat(self, *, taskToken: str) -> None:
        self.heartbeats += 1
        self.heartbeat_seen.set()
        if self.heartbeat_error is not None:
            raise self.heartbeat_error


class Work:
    """Counts the images of a message between the start of their fetch and the end of their inference."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.fetches = 0
        self.cancelled = 0

    def start(self) -> None:
        self.fetches += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1


class FakeImages:
    def __init__(self, spec: ModelSpec, work: Work, fail: Callable[[str], Exception | None] = lambda key: None) -> None:
        self.body = prepared_codec.encode(np.zeros(spec.input.shape, np.float32), b"header")
        self.work = work
        self.fail = fail
        self.puts: list[str] = []

    async def get_bytes(self, key: str) -> bytes:
        self.work.start()
        try:
            await asyncio.sleep(0)  # an S3 request: the other images get their turn
        except asyncio.CancelledError:
            self.work.cancelled += 1
            self.work.end()
            raise
        error = self.fail(key)
        if error is not None:
            self.work.end()
            raise error
        return self.body

    async def put_bytes(self, key: str, body: bytes, *, content_type: str) -> None:
        self.puts.append(key)


class FakeBatcher:
    """Answers every image after ``gate`` (when given) returns; counts images cancelled while waiting."""

    def __init__(self, spec: ModelSpec, work: Work, gate: Callable[[], Awaitable[object]] | None = None) -> None:
        self.spec = spec
        self.work = work
        self.gate = gate

    async def infer(self, tensor: Any) -> ItemResult:
        try:
            await asyncio.sleep(0)
            if self.gate is not None:
                await self.gate()
        except asyncio.CancelledError:
            self.work.cancelled += 1
            self.work.end()
            raise
        self.work.end()
        outputs = {
            self.spec.outputs.probability.name: np.array([0.7], np.float32),
            self.spec.outputs.heatmap.name: np.zeros(self.spec.heatmap_size, np.float32),
        }
        return ItemResult(outputs=outputs, queue_ms=0.0, infer_ms=1.0, batch_size=4, attempts=1)


class FakeTelemetry:
    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []

    def emit(self, *events: TelemetryEvent) -> None:
        self.events.extend(events)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return next(s for s in load_specs(PROJECT_ROOT / "triton" / "models") if s.name == MODEL)


class Harness:
    def __init__(self, spec: ModelSpec, **settings: Any) -> None:
        self.spec = spec
        self.work = Work()
        self.sqs = FakeSqs()
        self.sfn = FakeSfn()
        self.telemetry = FakeTelemetry()
        self.images = FakeImages(spec, self.work)
        self.batcher = FakeBatcher(spec, self.work)
        self.settings = Settings(worker_visibility_timeout_s=3, worker_images_in_flight=8, **settings)

    def worker(self) -> InferenceWorker:
        return InferenceWorker(
            self.settings,
            queue=sqs.MessageQueue(self.sqs, "queue"),
            tasks=stepfunctions.StepFunctions(self.sfn),
            images=self.images,  # type: ignore[arg-type]
            telemetry=self.telemetry,  # type: ignore[arg-type]
            batchers={MODEL: self.batcher},  # type: ignore[dict-item]
            specs={MODEL: self.spec},
        )

    async def handle(self, images: int = 3, receives: int = 1) -> InferenceWorker:
        worker = self.worker()
        await asyncio.wait_for(worker._handle(sqs.message_of(message(images, receives))), GUARD_S)
        return worker


def message(images: int, receives: int = 1) -> dict[str, Any]:
    prepared = [[f"1.2.3.{i}", 64, 64] for i in range(images)]
    body = {
        "task_token": "token",
        "tenant": "alpha",
        "study": "1.2.3",
        "request_id": "20260101T000000-abcdef123456",
        "model": MODEL,
        "prepared": [{"prepared": prepared, "failed": []}],
    }
    return {
        "ReceiptHandle": "receipt",
        "Body": json.dumps(body),
        "Attributes": {"ApproximateReceiveCount": str(receives), "SentTimestamp": "0"},
    }


async def test_a_study_is_answered_and_counted(spec: ModelSpec) -> None:
    h = Harness(spec)
    worker = await h.handle(images=3)
    assert h.sfn.successes == [
        {"outputs_key": "work/alpha/1.2.3/outputs/20260101T000000-abcdef123456.npz", "images": 3}
    ]
    assert h.sqs.deleted == ["receipt"]
    assert worker.completed == 1
    assert [(e.stage, e.outcome, e.instances) for e in h.telemetry.events] == [("inference", "ok", 3)]


@pytest.mark.parametrize("error", [RuntimeError("boom 1961-04-07"), IndexError("list index out of range")])
async def test_an_unexpected_error_fails_the_study_with_its_reason(
    spec: ModelSpec, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(spec)

    async def broken(tensor: Any) -> ItemResult:
        raise error

    h.batcher.infer = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="radstream.worker"):
        worker = await h.handle()
    # The class and where it was raised, never the message: a library's message may quote patient values.
    where = f"{type(error).__name__} at tests/pipeline/test_consumer.py:220 in broken"
    assert h.sfn.failures == [("InferenceFailed", where)]
    assert h.sfn.successes == []
    assert h.sqs.deleted == ["receipt"]
    assert worker.completed == 0
    assert f"unexpected {where}" in caplog.text and "raise error" in caplog.text  # the frames are logged
    assert str(error) not in caplog.text


async def test_a_failed_delete_after_the_answer_is_logged_not_raised(
    spec: ModelSpec, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(spec)
    h.sqs.fail_delete = aws_error("InternalError", "DeleteMessage")
    with caplog.at_level(logging.WARNING, logger="radstream.worker"):
        worker = await h.handle()
    assert len(h.sfn.successes) == 1
    assert worker.completed == 1
    assert any("deleting an answered message failed" in r.getMessage() for r in caplog.records)


async def test_a_redelivered_message_of_a_closed_task_is_dropped_without_inferring(spec: ModelSpec) -> None:
    h = Harness(spec)
    h.sfn.heartbeat_error = aws_error("TaskTimedOut", "SendTaskHeartbeat")
    await h.handle(receives=2)
    assert h.work.fetches == 0
    assert h.sfn.successes == [] and h.sfn.failures == []
    assert h.sqs.deleted == ["receipt"]


@pytest.mark.parametrize("code", ["TaskTimedOut", "InvalidToken"])
async def test_an_answer_to_a_closed_task_is_not_counted_as_completed(spec: ModelSpec, code: str) -> None:
    h = Harness(spec)
    h.sfn.success_error = aws_error(code, "SendTaskSuccess")
    worker = await h.handle()
    assert worker.completed == 0
    assert h.sqs.deleted == ["receipt"]
    assert [(e.stage, e.outcome, e.reason) for e in h.telemetry.events] == [("inference", "failed", code)]


async def test_a_failing_visibility_change_does_not_skip_the_heartbeat(spec: ModelSpec) -> None:
    h = Harness(spec)
    h.sqs.fail_visibility = aws_error("InternalError", "ChangeMessageVisibility")
    h.batcher.gate = h.sfn.heartbeat_seen.wait  # the images are answered only once the task was heartbeated
    worker = await h.handle()
    assert h.sfn.heartbeats >= 1
    assert worker.completed == 1


async def test_a_heartbeat_answered_task_timed_out_stops_the_work(spec: ModelSpec) -> None:
    h = Harness(spec)
    h.sfn.heartbeat_error = aws_error("TaskTimedOut", "SendTaskHeartbeat")
    h.batcher.gate = asyncio.Event().wait  # never answered: only the heartbeat can end this
    worker = await h.handle(images=5)
    assert h.work.cancelled == 5
    assert h.work.in_flight == 0
    assert h.sqs.deleted == ["receipt"]
    assert h.sfn.successes == [] and h.sfn.failures == []
    assert h.images.puts == []
    assert worker.completed == 0


async def test_images_in_flight_are_bounded(spec: ModelSpec) -> None:
    h = Harness(spec)
    worker = await h.handle(images=200)
    assert h.work.fetches == 200
    assert h.work.most == h.settings.worker_images_in_flight
    assert h.sfn.successes[0]["images"] == 200
    assert worker.completed == 1


async def test_the_first_failed_image_cancels_the_others(spec: ModelSpec) -> None:
    h = Harness(spec)
    h.images.fail = lambda key: NotFound(key) if "1.2.3.3." in key else None
    h.batcher.gate = asyncio.Event().wait  # the other images wait at the batcher until cancelled
    await h.handle(images=50)
    (failure,) = h.sfn.failures
    assert failure[0] == "InferenceFailed" and failure[1].startswith("NotFound: ")
    assert h.work.in_flight == 0  # nothing of this message still runs
    assert h.work.cancelled == h.work.fetches - 1 >= 1
    fetched = h.work.fetches
    for _ in range(10):
        await asyncio.sleep(0)
    assert h.work.fetches == fetched  # and nothing starts after the answer
    assert h.images.puts == []


async def test_a_study_of_which_nothing_could_be_decoded_fails_with_decode_failed(spec: ModelSpec) -> None:
    h = Harness(spec)
    body = json.loads(message(0)["Body"])
    body["prepared"] = [
        {"prepared": [], "failed": [{"sop": "1.2.3.1", "reason": "NotImplementedError: JPEG 2000 decoder"}]},
        {"prepared": [], "failed": [{"sop": "1.2.3.2", "reason": "PreprocessError: no pixel data"}]},
    ]
    worker = h.worker()
    await asyncio.wait_for(worker._handle(sqs.message_of({**message(0), "Body": json.dumps(body)})), GUARD_S)
    assert h.sfn.failures == [
        ("DecodeFailed", "none of 2 instances could be decoded: NotImplementedError: JPEG 2000 decoder")
    ]
    assert h.sfn.successes == [] and h.sqs.deleted == ["receipt"] and worker.completed == 0
