"""The inference worker: consumes RunInference messages, batches across studies on Triton, answers the
state machine with the task token.

* Backpressure: at most ``worker_max_messages`` messages are held; it receives only when a slot is free.
* While it works on a message it extends the message's visibility and heartbeats the task token.
* It deletes a message only after SendTaskSuccess/SendTaskFailure went through; a worker killed while
  holding one leaves it to reappear after the visibility timeout, for another worker to finish.
* Triton unavailable: the message is left for redelivery (short visibility); after ``worker_max_attempts``
  receives the study fails with ``InferenceUnavailable`` instead of waiting forever. A message that cannot
  be parsed at all goes to the DLQ through the queue's redrive policy.
* SIGTERM: stop receiving, finish what is held, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

from radstream import keys
from radstream.errors import NotFound, StorageUnavailable
from radstream.settings import Settings
from radstream.storage import ObjectStore
from radstream.telemetry import BufferedTelemetry, TelemetryEvent
from worker.inference.batcher import Batcher
from worker.inference.client import InferenceTimeout, ModelNotReady, TritonError, TritonUnavailable
from worker.inference.preprocess import PreparedImage
from worker.inference.service import to_instance_output
from worker.inference.spec import ModelSpec
from worker.pipeline import outputs as output_codec
from worker.pipeline import prepared as prepared_codec

log = logging.getLogger("radstream.worker")

UNAVAILABLE = (TritonUnavailable, InferenceTimeout, ModelNotReady, StorageUnavailable)
RETRY_VISIBILITY_S = 5
SQS_MAX_BATCH = 10


class InvalidMessage(ValueError):
    pass


@dataclass(frozen=True)
class Job:
    token: str
    tenant: str
    study: str
    request_id: str
    model: str
    images: list[tuple[str, int, int]]  # sop, rows, cols

    @classmethod
    def parse(cls, body: str) -> Job:
        try:
            data = json.loads(body)
            images = [(str(s), int(r), int(c)) for batch in data["prepared"] for s, r, c in batch["prepared"]]
            return cls(
                token=str(data["task_token"]),
                tenant=str(data["tenant"]),
                study=str(data["study"]),
                request_id=str(data["request_id"]),
                model=str(data["model"]),
                images=images,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidMessage(f"not a RunInference message: {type(exc).__name__}: {exc}") from exc


def token_of(body: str) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(body).get("task_token")
        return str(token) if token else None
    return None


class InferenceWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        sqs: Any,
        sfn: Any,
        images: ObjectStore,
        telemetry: BufferedTelemetry,
        batchers: dict[str, Batcher],
        specs: dict[str, ModelSpec],
        queue_url: str,
    ) -> None:
        self.settings = settings
        self.sqs = sqs
        self.sfn = sfn
        self.images = images
        self.telemetry = telemetry
        self.batchers = batchers
        self.specs = specs
        self.queue_url = queue_url
        self.completed = 0
        self._held: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish every held message."""
        limit = self.settings.worker_max_messages
        while not stop.is_set():
            free = limit - len(self._held)
            if free <= 0:
                await asyncio.wait(self._held, return_when=asyncio.FIRST_COMPLETED)
                continue
            receive = asyncio.create_task(
                self.sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=min(SQS_MAX_BATCH, free),
                    WaitTimeSeconds=self.settings.worker_poll_wait_s,
                    VisibilityTimeout=self.settings.worker_visibility_timeout_s,
                    MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                )
            )
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if receive not in done:
                receive.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receive
                break
            try:
                messages = receive.result().get("Messages", [])
            except Exception as exc:
                log.warning("receive_message failed: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._held.add(task)
                task.add_done_callback(self._held.discard)
        if self._held:
            log.info("stopping: finishing %d held messages", len(self._held))
            await asyncio.gather(*self._held, return_exceptions=True)

    async def _handle(self, message: dict[str, Any]) -> None:
        received = time.time()
        attributes = message.get("Attributes", {})
        receives = int(attributes.get("ApproximateReceiveCount", "1"))
        queue_wait_ms = max(0.0, received * 1e3 - float(attributes.get("SentTimestamp", received * 1e3)))
        receipt = message["ReceiptHandle"]
        try:
            job = Job.parse(message["Body"])
        except InvalidMessage as exc:
            token = token_of(message["Body"])
            if token is None:
                # Visible again soon, so the queue's redrive policy moves it to the DLQ after N receives.
                log.error("unparseable message left for the dead-letter queue: %s", exc)
                with contextlib.suppress(Exception):
                    await self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=1
                    )
                return
            await self._finish(receipt, token, error=("InferenceFailed", str(exc)))
            return
        keepalive = asyncio.create_task(self._keepalive(receipt, job.token))
        started = time.perf_counter()
        try:
            batch_sizes = await self._infer(job)
        except UNAVAILABLE as exc:
            if receives >= self.settings.worker_max_attempts:
                reason = f"Triton unavailable after {receives} attempts: {type(exc).__name__}: {exc}"
                await self._finish(receipt, job.token, error=("InferenceUnavailable", reason), job=job)
            else:
                log.warning("study %s: %s; will retry (attempt %d)", job.study, type(exc).__name__, receives)
                with contextlib.suppress(Exception):
                    await self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=RETRY_VISIBILITY_S
                    )
            return
        except (TritonError, NotFound, ValueError, KeyError) as exc:
            await self._finish(receipt, job.token, error=("InferenceFailed", f"{type(exc).__name__}: {exc}"), job=job)
            return
        finally:
            keepalive.cancel()
        duration_ms = (time.perf_counter() - started) * 1e3
        output = {"outputs_key": keys.outputs_key(job.tenant, job.study, job.request_id), "images": len(job.images)}
        if await self._finish(receipt, job.token, output=output, job=job):
            self.completed += 1
            self.telemetry.emit(
                TelemetryEvent(
                    stage="inference",
                    tenant=job.tenant,
                    study_uid=job.study,
                    duration_ms=duration_ms,
                    queue_wait_ms=queue_wait_ms,
                    batch_size=int(statistics.median(batch_sizes)) if batch_sizes else None,
                    model=job.model,
                    instances=len(job.images),
                )
            )

    async def _infer(self, job: Job) -> list[int]:
        spec = self.specs.get(job.model)
        if spec is None:
            raise KeyError(f"model {job.model!r} is not served by this worker")
        batcher = self.batchers[job.model]

        async def one(sop: str, rows: int, cols: int) -> tuple[Any, bytes, int]:
            raw = await self.images.get_bytes(keys.prepared_key(job.tenant, job.study, sop))
            tensor, header = prepared_codec.decode(raw)
            result = await batcher.infer(tensor)
            prepared = PreparedImage(sop, "", "", tensor, (rows, cols), 0, {})
            return to_instance_output(prepared, spec, result), header, result.batch_size

        results = await asyncio.gather(*(one(*image) for image in job.images))
        data = output_codec.encode([r[0] for r in results], [r[1] for r in results])
        await self.images.put_bytes(
            keys.outputs_key(job.tenant, job.study, job.request_id), data, content_type="application/octet-stream"
        )
        return [r[2] for r in results]

    async def _keepalive(self, receipt: str, token: str) -> None:
        interval = max(1.0, self.settings.worker_visibility_timeout_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self.settings.worker_visibility_timeout_s,
                )
                await self.sfn.send_task_heartbeat(taskToken=token)

    async def _finish(
        self,
        receipt: str,
        token: str,
        *,
        output: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
        job: Job | None = None,
    ) -> bool:
        """Answer the state machine, then delete the message. False if the answer did not go through."""
        try:
            if error is None:
                await self.sfn.send_task_success(taskToken=token, output=json.dumps(output))
            else:
                log.error("study %s failed: %s: %s", job.study if job else "?", error[0], error[1][:300])
                await self.sfn.send_task_failure(taskToken=token, error=error[0], cause=error[1][:32000])
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code not in ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken"):
                log.warning("answering the task failed (%s); the message will be redelivered", type(exc).__name__)
                return False
            log.info("task already closed (%s); dropping the duplicate message", code)
        await self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        return error is None
