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

from radstream import keys
from radstream.aws import sqs, stepfunctions
from radstream.errors import NotFound
from radstream.settings import PROJECT_ROOT, Settings
from radstream.telemetry import TelemetryEvent
from worker.formats import prepared as prepared_codec
from worker.formats.plan import Plan, PlanItem, ShardResult
from worker.inference.batcher import ItemResult
from worker.inference.consumer import InferenceWorker
from worker.inference.triton.errors import ServerFault, TritonUnavailable
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
    """Prepared objects for any key, and the run's plan and shard results (``objects``)."""

    def __init__(self, spec: ModelSpec, work: Work, fail: Callable[[str], Exception | None] = lambda key: None) -> None:
        self.body = prepared_codec.encode(np.zeros(spec.input.shape, np.float32), b"header")
        self.work = work
        self.fail = fail
        self.puts: list[str] = []
        self.objects: dict[str, bytes] = {}

    async def get_bytes(self, key: str) -> bytes:
        if key in self.objects:
            return self.objects[key]
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

    def plan(self, images: int, shards: list[ShardResult] | None = None) -> None:
        """The run's plan of ``images`` items, and its shard results (by default: one, every item prepared)."""
        items = [
            PlanItem(key=f"instances/alpha/1.2.3/1.2.3.9/1.2.3.{i}.dcm", sop=f"1.2.3.{i}", series="1.2.3.9", sha256="0")
            for i in range(images)
        ]
        shards = shards if shards is not None else [ShardResult(prepared=[(i, 64, 64) for i in range(images)])]
        plan = Plan(run_id=RUN, seq=1, full=False, model=MODEL, items=items, routed=items, shards=len(shards))
        self.images.objects[keys.plan_key("alpha", "1.2.3", RUN)] = plan.model_dump_json().encode()
        for n, shard in enumerate(shards):
            self.images.objects[keys.shard_key("alpha", "1.2.3", RUN, n)] = shard.model_dump_json().encode()
        self.shards = len(shards)

    async def handle(self, images: int = 3, receives: int = 1) -> InferenceWorker:
        self.plan(images)
        return await self.handle_planned(receives)

    async def handle_planned(self, receives: int = 1) -> InferenceWorker:
        worker = self.worker()
        await asyncio.wait_for(worker._handle(sqs.message_of(message(self.shards, receives))), GUARD_S)
        return worker


RUN = "20260101T000000-abcdef123456"


def message(shards: int, receives: int = 1) -> dict[str, Any]:
    body = {
        "task_token": "token",
        "tenant": "alpha",
        "study": "1.2.3",
        "run_id": RUN,
        "seq": 1,
        "full": False,
        "model": MODEL,
        "shard_count": shards,
    }
    return {
        "ReceiptHandle": "receipt",
        "Body": json.dumps(body),
        "Attributes": {"ApproximateReceiveCount": str(receives), "SentTimestamp": "0"},
    }


async def test_a_study_is_answered_and_counted(spec: ModelSpec) -> None:
    h = Harness(spec)
    worker = await h.handle(images=3)
    assert h.sfn.successes == [{"outputs": f"outputs/alpha/1.2.3/000001-{RUN}.npz", "images": 3}]
    assert h.images.puts == [f"outputs/alpha/1.2.3/000001-{RUN}.npz", f"outputs/alpha/1.2.3/000001-{RUN}.json"]
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
    where = f"{type(error).__name__} at tests/pipeline/test_consumer.py:248 in broken"
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
    h.images.fail = lambda key: NotFound(key) if key.endswith("/3.prepared.npz") else None
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
    h.plan(
        2,
        [
            ShardResult(failed=[(0, "cannot decode pixel data (JPEG 2000)")]),
            ShardResult(failed=[(1, "dataset has no pixel data")]),
        ],
    )
    worker = await h.handle_planned()
    assert h.sfn.failures == [
        ("DecodeFailed", "none of 2 instances could be decoded: cannot decode pixel data (JPEG 2000)")
    ]
    assert h.sfn.successes == [] and h.sqs.deleted == ["receipt"] and worker.completed == 0


class Flaky:
    """A batcher's infer that raises ``error`` for its first ``times`` calls, then answers."""

    def __init__(self, h: Harness, error: Exception, times: int) -> None:
        self.infer, self.error, self.left, self.calls = h.batcher.infer, error, times, 0
        h.batcher.infer = self  # type: ignore[method-assign,assignment]

    async def __call__(self, tensor: Any) -> ItemResult:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise self.error
        return await self.infer(tensor)


async def test_an_unavailable_server_is_waited_out_holding_the_message(spec: ModelSpec) -> None:
    h = Harness(spec, worker_outage_budget_s=30)
    flaky = Flaky(h, TritonUnavailable("connection refused"), times=2)
    worker = await h.handle(images=1)
    assert flaky.calls == 3
    assert len(h.sfn.successes) == 1 and h.sfn.failures == []
    assert h.sqs.visibility and min(h.sqs.visibility) == h.settings.worker_visibility_timeout_s  # held, not released
    assert h.sfn.heartbeats >= 2  # heartbeated while it waited
    assert worker.completed == 1


async def test_past_the_outage_budget_the_study_fails_saying_so(spec: ModelSpec) -> None:
    h = Harness(spec, worker_outage_budget_s=1.5)
    flaky = Flaky(h, TritonUnavailable("connection refused"), times=1000)
    await h.handle(images=1)
    ((name, reason),) = h.sfn.failures
    assert name == "InferenceUnavailable"
    assert "past the outage budget of 2 s" in reason or "past the outage budget of 1 s" in reason
    assert "reprocess the study" in reason
    assert 2 <= flaky.calls <= 6


@pytest.mark.parametrize(("faults", "answered"), [(2, "success"), (9, "InferenceFailed")])
async def test_server_faults_are_tried_again_a_few_times(spec: ModelSpec, faults: int, answered: str) -> None:
    h = Harness(spec, worker_server_fault_retries=2)
    h.settings = h.settings.model_copy(update={"worker_server_fault_retries": 2})
    flaky = Flaky(h, ServerFault("lesion_detector: CUDA error (StatusCode.INTERNAL)"), times=faults)
    await h.handle(images=1)
    if answered == "success":
        assert len(h.sfn.successes) == 1 and flaky.calls == 3
    else:
        assert [name for name, _ in h.sfn.failures] == ["InferenceFailed"] and flaky.calls == 3
        assert "failed 3 times" in h.sfn.failures[0][1]
