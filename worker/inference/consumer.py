"""The inference worker: consumes RunInference messages, batches across studies on Triton, answers the
state machine with the task token.

* Backpressure: at most ``worker_max_messages`` messages are held; it receives only when a slot is free.
  Within one message at most ``worker_images_in_flight`` images are fetched, decoded or at the batcher at
  once, so a study of thousands of images holds a bounded number of tensors and S3 requests.
* The first image that fails cancels the others of its message: nothing of a message runs on after it was
  answered.
* While it works on a message it extends the message's visibility and heartbeats the task token (each on
  its own: one failing does not skip the other). A heartbeat answered TaskTimedOut means the execution no
  longer waits: the work is cancelled and the message deleted.
* It deletes a message only after SendTaskSuccess/SendTaskFailure went through; a worker killed while
  holding one leaves it to reappear after the visibility timeout, for another worker to finish. A delete
  that fails is only logged: the task is closed, so the redelivered message is deleted after one heartbeat
  (answered TaskTimedOut/InvalidToken), without inferring again.
* Triton unavailable: the message is left for redelivery (short visibility); after ``worker_max_attempts``
  receives the study fails with ``InferenceUnavailable`` instead of waiting forever. A message that cannot
  be parsed at all goes to the DLQ through the queue's redrive policy.
* Any other error, expected or not, fails the study with ``InferenceFailed`` and its reason (unexpected
  ones are logged with the traceback), instead of leaving the execution to its heartbeat timeout.
* SIGTERM: stop receiving, finish what is held, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from radstream import keys
from radstream.aws.config import error_code
from radstream.aws.s3 import ObjectStore
from radstream.errors import NotFound, StorageUnavailable, frames
from radstream.errors import describe as where
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry, TelemetryEvent
from worker.formats import outputs as output_codec
from worker.formats import prepared as prepared_codec
from worker.formats.errors import DecodeFailed
from worker.formats.types import InstanceOutput
from worker.inference.batcher import Batcher
from worker.inference.client import InferenceTimeout, ModelNotReady, TritonError, TritonUnavailable
from worker.inference.service import to_instance_output
from worker.models.preprocess import PreparedImage
from worker.models.spec import ModelSpec

log = logging.getLogger("radstream.worker")

UNAVAILABLE = (TritonUnavailable, InferenceTimeout, ModelNotReady, StorageUnavailable)
# What Step Functions answers for a token whose task is closed (timed out, answered, execution stopped).
CLOSED_TASK_CODES = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})
RETRY_VISIBILITY_S = 5
SQS_MAX_BATCH = 10


class InvalidMessage(ValueError):
    pass


class TaskClosed(Exception):
    """The state machine closed the task while the worker was on it; the argument is the error code."""


class Answer(enum.Enum):
    """What became of an answer to the state machine."""

    ACCEPTED = "accepted"  # the task took it; the message is deleted
    CLOSED = "closed"  # the task was closed already (timed out, answered before); the message is deleted
    NOT_SENT = "not_sent"  # it did not go through; the message is left for redelivery


@dataclass(frozen=True)
class Job:
    token: str
    tenant: str
    study: str
    request_id: str
    model: str
    images: list[tuple[str, int, int]]  # sop, rows, cols
    undecoded: list[str] = field(default_factory=list)  # why PrepareTensors could not decode an instance

    @classmethod
    def parse(cls, body: str) -> Job:
        try:
            data = json.loads(body)
            images = [(str(s), int(r), int(c)) for batch in data["prepared"] for s, r, c in batch["prepared"]]
            undecoded = [str(f.get("reason", "")) for batch in data["prepared"] for f in batch.get("failed", [])]
            return cls(
                token=str(data["task_token"]),
                tenant=str(data["tenant"]),
                study=str(data["study"]),
                request_id=str(data["request_id"]),
                model=str(data["model"]),
                images=images,
                undecoded=undecoded,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidMessage(f"not a RunInference message: {type(exc).__name__}: {exc}") from exc


def token_of(body: str) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(body).get("task_token")
        return str(token) if token else None
    return None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that failed a TaskGroup (the first one raised; the others are siblings it cancelled or
    failures at the same moment)."""
    error = group.exceptions[0]
    return first_error(error) if isinstance(error, BaseExceptionGroup) else error


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
        """Handle one message. Never raises: an exception escaping a held task would leave the task
        unanswered (the execution waiting for its heartbeat timeout) and the message going round until
        the dead-letter queue, with the reason only in asyncio's "never retrieved" log line."""
        try:
            await self._process(message)
        except Exception as exc:
            log.error("unexpected %s while handling a message\n%s", where(exc), frames(exc))
            token, receipt = token_of(str(message.get("Body", ""))), message.get("ReceiptHandle")
            if token is not None and receipt is not None:
                await self._finish(str(receipt), token, error=("InferenceFailed", where(exc)))

    async def _process(self, message: dict[str, Any]) -> None:
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
        if receives > 1 and (closed := await self._closed(job.token)):
            # answered before and the delete failed, or the execution gave up: nothing left to do
            log.info("study %s: task already closed (%s); dropping the redelivered message", job.study, closed)
            await self._delete(receipt)
            return
        if not job.images:  # every batch of PrepareTensors failed to decode all of its instances
            first = job.undecoded[0] if job.undecoded else "no instance was prepared"
            reason = f"none of {len(job.undecoded)} instances could be decoded: {first}"
            await self._finish(receipt, job.token, error=(DecodeFailed.__name__, reason), job=job)
            return
        started = time.perf_counter()
        try:
            batch_sizes = await self._infer_while_alive(job, receipt)
        except TaskClosed as exc:
            log.warning("study %s: the task was closed (%s); work stopped, message deleted", job.study, exc)
            await self._delete(receipt)
            return
        except UNAVAILABLE as exc:
            if receives >= self.settings.worker_max_attempts:
                reason = f"Triton unavailable after {receives} attempts: {describe(exc)}"
                await self._finish(receipt, job.token, error=("InferenceUnavailable", reason), job=job)
            else:
                log.warning("study %s: %s; will retry (attempt %d)", job.study, type(exc).__name__, receives)
                with contextlib.suppress(Exception):
                    await self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=RETRY_VISIBILITY_S
                    )
            return
        except (TritonError, NotFound, ValueError, KeyError) as exc:
            await self._finish(receipt, job.token, error=("InferenceFailed", describe(exc)), job=job)
            return
        except Exception as exc:  # a bug or a failure nobody foresaw: the study still learns why
            log.error("study %s: unexpected %s during inference\n%s", job.study, where(exc), frames(exc))
            await self._finish(receipt, job.token, error=("InferenceFailed", where(exc)), job=job)
            return
        duration_ms = (time.perf_counter() - started) * 1e3
        output = {"outputs_key": keys.outputs_key(job.tenant, job.study, job.request_id), "images": len(job.images)}
        answer, code = await self._finish(receipt, job.token, output=output, job=job)
        if answer is Answer.NOT_SENT:
            return
        if answer is Answer.ACCEPTED:
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
                # inferred, but the execution no longer waited for it (it timed out or was answered before)
                outcome="ok" if answer is Answer.ACCEPTED else "failed",
                reason=None if answer is Answer.ACCEPTED else code,
            )
        )

    async def _closed(self, token: str) -> str | None:
        """The error code if the task of ``token`` is closed already (one heartbeat), else None."""
        try:
            await self.sfn.send_task_heartbeat(taskToken=token)
        except Exception as exc:
            code = error_code(exc)
            if code in CLOSED_TASK_CODES:
                return code
            log.warning("task heartbeat failed: %s", type(exc).__name__)
        return None

    async def _infer_while_alive(self, job: Job, receipt: str) -> list[int]:
        """:meth:`_infer` while the message's visibility is extended and the task heartbeated. Raises
        TaskClosed, after cancelling the work, as soon as a heartbeat says the task is closed."""
        work = asyncio.create_task(self._infer(job))
        keepalive = asyncio.create_task(self._keepalive(receipt, job.token))
        try:
            await asyncio.wait({work, keepalive}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keepalive.cancel()
            stopped = work.cancel()  # False when it finished
            await asyncio.gather(work, keepalive, return_exceptions=True)
        if stopped:
            raise TaskClosed(keepalive.result())
        return work.result()

    async def _infer(self, job: Job) -> list[int]:
        spec = self.specs.get(job.model)
        if spec is None:
            raise KeyError(f"model {job.model!r} is not served by this worker")
        batcher = self.batchers[job.model]
        results: list[tuple[InstanceOutput, bytes, int] | None] = [None] * len(job.images)
        pending = iter(enumerate(job.images))

        async def lane() -> None:
            """Takes the next image when done with one: the lanes bound the images in flight."""
            for index, (sop, rows, cols) in pending:
                raw = await self.images.get_bytes(keys.prepared_key(job.tenant, job.study, sop))
                tensor, header = prepared_codec.decode(raw)
                del raw
                result = await batcher.infer(tensor)
                prepared = PreparedImage(sop, "", "", tensor, (rows, cols), 0, {})
                results[index] = (to_instance_output(prepared, spec, result), header, result.batch_size)

        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as lanes:  # the first failure cancels the other lanes
                for _ in range(min(self.settings.worker_images_in_flight, len(job.images))):
                    lanes.create_task(lane())
        except BaseExceptionGroup as group:
            failure = first_error(group)
        if failure is not None:
            raise failure  # outside the handler: typed as the handlers of _process expect, without the group
        done = [r for r in results if r is not None]
        data = output_codec.encode([r[0] for r in done], [r[1] for r in done])
        await self.images.put_bytes(
            keys.outputs_key(job.tenant, job.study, job.request_id), data, content_type="application/octet-stream"
        )
        return [r[2] for r in done]

    async def _keepalive(self, receipt: str, token: str) -> str:
        """Extend the message's visibility and heartbeat the task until cancelled, each call on its own
        (a failing visibility change must not cost the heartbeat). Returns the error code when a heartbeat
        says the task is closed."""
        interval = max(1.0, self.settings.worker_visibility_timeout_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self.settings.worker_visibility_timeout_s,
                )
            except Exception as exc:
                log.warning("extending a message's visibility failed: %s", type(exc).__name__)
            if closed := await self._closed(token):
                return closed

    async def _finish(
        self,
        receipt: str,
        token: str,
        *,
        output: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
        job: Job | None = None,
    ) -> tuple[Answer, str]:
        """Answer the state machine, then delete the message. Returns what became of the answer, and the
        error code when the task was closed already."""
        try:
            if error is None:
                await self.sfn.send_task_success(taskToken=token, output=json.dumps(output))
            else:
                log.error("study %s failed: %s: %s", job.study if job else "?", error[0], error[1][:300])
                await self.sfn.send_task_failure(taskToken=token, error=error[0], cause=error[1][:32000])
        except Exception as exc:
            code = error_code(exc)
            if code not in CLOSED_TASK_CODES:
                log.warning("answering the task failed (%s); the message will be redelivered", type(exc).__name__)
                return Answer.NOT_SENT, code
            log.info("task already closed (%s); dropping the duplicate message", code)
            await self._delete(receipt)
            return Answer.CLOSED, code
        await self._delete(receipt)
        return Answer.ACCEPTED, ""

    async def _delete(self, receipt: str) -> None:
        """Delete a message whose task is answered or closed. A failure is logged, not raised: the task is
        closed, so a redelivery is dropped after one heartbeat (see :meth:`_process`)."""
        try:
            await self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
        except Exception as exc:
            log.warning("deleting an answered message failed (%s); its redelivery will be dropped", type(exc).__name__)
