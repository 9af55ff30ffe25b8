"""The inference worker: consumes RunInference messages, batches across studies on Triton, answers the
state machine with the task token.

* Backpressure: at most ``worker_max_messages`` messages are held; it receives only when a slot is free.
  Within one message at most ``worker_images_in_flight`` images are fetched, decoded or at the batcher at
  once, so a study of thousands of images holds a bounded number of tensors and S3 requests.
* The first image that fails cancels the others of its message: nothing of a message runs on after it was
  answered.
* While it works on a message its lease (lease.py) extends the message's visibility and heartbeats the
  task token. A heartbeat answered TaskTimedOut means the execution no longer waits: the work is
  cancelled and the message deleted. A message is deleted only after its answer went through.
* What to do when inference raised is answers.py: an unavailable Triton is waited out, holding the message
  and heartbeating, up to the outage budget; a server fault is tried again a few times; any other error
  fails the study with its reason, instead of leaving the execution to its heartbeat timeout. A message
  that cannot be parsed at all goes to the DLQ through the queue's redrive policy.
* What the run infers is in S3: the shard results of PrepareTensors and the run's plan. The outputs go to
  ``outputs/`` with an index of the instances they cover, written last (worker/formats/plan.py).
* SIGTERM: stop receiving, finish what is held, exit; a message waiting out an outage is left for
  redelivery instead.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

from radstream import keys
from radstream.aws.s3 import ObjectStore
from radstream.aws.sqs import Message, MessageQueue
from radstream.aws.stepfunctions import StepFunctions
from radstream.errors import TaskClosed, frames
from radstream.errors import describe as where
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry, TelemetryEvent
from worker.formats import outputs as output_codec
from worker.formats import prepared as prepared_codec
from worker.formats.errors import DecodeFailed, InferenceFailed, InvalidMessage, PipelineError
from worker.formats.plan import OutputsIndex, Plan, ShardResult
from worker.formats.task import InferenceTask, token_of
from worker.formats.types import InstanceOutput
from worker.inference.answers import Retries
from worker.inference.batcher import Batcher
from worker.inference.lease import Answer, Lease
from worker.inference.postprocess import to_instance_output
from worker.models.spec import ModelSpec

log = logging.getLogger("radstream.worker")

RETRY_VISIBILITY_S = 5


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
        queue: MessageQueue,
        tasks: StepFunctions,
        images: ObjectStore,
        telemetry: BufferedTelemetry,
        batchers: dict[str, Batcher],
        specs: dict[str, ModelSpec],
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.tasks = tasks
        self.images = images
        self.telemetry = telemetry
        self.batchers = batchers
        self.specs = specs
        self.completed = 0
        self._held: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish every held message."""
        self._stopping = stop
        limit = self.settings.worker_max_messages
        while not stop.is_set():
            free = limit - len(self._held)
            if free <= 0:
                await asyncio.wait(self._held, return_when=asyncio.FIRST_COMPLETED)
                continue
            receive = asyncio.create_task(
                self.queue.receive(
                    max_messages=free,
                    wait_s=self.settings.worker_poll_wait_s,
                    visibility_s=self.settings.worker_visibility_timeout_s,
                )
            )
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({receive, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if receive not in done:
                receive.cancel()
                await asyncio.gather(receive, return_exceptions=True)
                break
            try:
                messages = receive.result()
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

    async def _handle(self, message: Message) -> None:
        """Handle one message. Never raises: an exception escaping a held task would leave the task
        unanswered (the execution waiting for its heartbeat timeout) and the message going round until
        the dead-letter queue, with the reason only in asyncio's "never retrieved" log line."""
        lease = Lease(self.queue, self.tasks, message, token_of(message.body))
        try:
            await self._process(lease)
        except Exception as exc:
            log.error("unexpected %s while handling a message\n%s", where(exc), frames(exc))
            if lease.token is not None:
                await lease.fail(InferenceFailed(where(exc)))

    async def _process(self, lease: Lease) -> None:
        """Accept the message, run its task, conclude: each step decides what it hands on."""
        received_ms = time.time() * 1e3
        task = await self._accept(lease)
        if task is not None:
            started = time.perf_counter()
            result = await self._execute(task, lease)
            await self._conclude(task, lease, result, received_ms, (time.perf_counter() - started) * 1e3)

    async def _accept(self, lease: Lease) -> InferenceTask | None:
        """The message's task, or None when there is nothing to run: the message is not a RunInference
        message (failed, or left for the dead-letter queue without a token), or it is a redelivery of a task
        that is closed already (answered before and the delete failed, or the execution gave up)."""
        try:
            task = InferenceTask.parse(lease.message.body)
        except InvalidMessage as exc:
            if lease.token is None:
                # Visible again soon, so the queue's redrive policy moves it to the DLQ after N receives.
                log.error("unparseable message left for the dead-letter queue: %s", exc)
                await lease.release()
            else:
                await lease.fail(InferenceFailed(str(exc)))
            return None
        if lease.message.receives > 1 and (closed := await lease.closed()):
            log.info("study %s: task already closed (%s); dropping the redelivered message", task.study, closed)
            await lease.delete()
            return None
        return task

    async def _execute(self, task: InferenceTask, lease: Lease) -> list[int] | PipelineError | TaskClosed | None:
        """Infer the task's images: the batch sizes they went in, the error to fail the task with, the
        task closed meanwhile, or None (stopping while waiting out an outage: leave the message)."""
        try:
            work = await self._work(task)
        except PipelineError as exc:
            return exc
        except Exception as exc:  # the run's objects could not be read
            return InferenceFailed(f"the run's plan or shards could not be read: {where(exc)}")
        if not work.images:  # every shard of PrepareTensors failed to decode all of its instances
            first = work.undecoded[0] if work.undecoded else "no instance was prepared"
            return DecodeFailed(f"none of {len(work.undecoded)} instances could be decoded: {first}")
        retries = Retries(self.settings.worker_outage_budget_s, self.settings.worker_server_fault_retries)
        while True:
            try:
                return await self._infer_while_alive(task, work, lease)
            except TaskClosed as exc:
                return exc
            except Exception as exc:
                decision = retries.decide(exc, study=task.study)
            if isinstance(decision, PipelineError):
                return decision
            closed = await self._pause(lease, decision)
            if closed is not None:
                return TaskClosed(closed)
            if self._stopping.is_set():
                return None

    async def _pause(self, lease: Lease, seconds: float) -> str | None:
        """Wait ``seconds`` holding the message (visibility extended, task heartbeated); the error code if a
        heartbeat says the task is closed. Ends early when the worker is stopping."""
        await lease.extend(self.settings.worker_visibility_timeout_s)
        if closed := await lease.closed():
            return closed
        keepalive = asyncio.create_task(lease.keep_alive(self.settings.worker_visibility_timeout_s))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({keepalive, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keepalive.cancel()
            stopping.cancel()
            await asyncio.gather(keepalive, stopping, return_exceptions=True)
        return keepalive.result() if keepalive.done() and not keepalive.cancelled() else None

    async def _work(self, task: InferenceTask) -> _Work:
        """What the run infers: its plan, and the items each shard prepared (or could not)."""
        plan = Plan.model_validate_json(
            await self.images.get_bytes(keys.plan_key(task.tenant, task.study, task.run_id))
        )
        work = _Work(plan)
        for shard in range(task.shards):
            raw = await self.images.get_bytes(keys.shard_key(task.tenant, task.study, task.run_id, shard))
            result = ShardResult.model_validate_json(raw)
            work.images += result.prepared
            work.undecoded += [reason for _, reason in result.failed]
        return work

    async def _conclude(
        self,
        task: InferenceTask,
        lease: Lease,
        result: list[int] | PipelineError | TaskClosed | None,
        received_ms: float,
        duration_ms: float,
    ) -> None:
        """Answer the state machine with the result (or leave the message for redelivery), and record an
        inference that was answered."""
        if result is None:
            await lease.release(RETRY_VISIBILITY_S)
            return
        if isinstance(result, TaskClosed):
            log.warning("study %s: the task was closed (%s); work stopped, message deleted", task.study, result.code)
            await lease.delete()
            return
        if isinstance(result, PipelineError):
            await lease.fail(result, task.study)
            return
        output = {"outputs": keys.outputs_key(task.tenant, task.study, task.seq, task.run_id), "images": len(result)}
        answer, code = await lease.succeed(output)
        if answer is Answer.NOT_SENT:
            return
        if answer is Answer.ACCEPTED:
            self.completed += 1
        sent_ms = lease.message.sent_at_ms if lease.message.sent_at_ms is not None else received_ms
        self.telemetry.emit(
            TelemetryEvent(
                stage="inference",
                tenant=task.tenant,
                study_uid=task.study,
                duration_ms=duration_ms,
                queue_wait_ms=max(0.0, received_ms - sent_ms),
                batch_size=int(statistics.median(result)) if result else None,
                model=task.model,
                instances=len(result),
                # inferred, but the execution no longer waited for it (it timed out or was answered before)
                outcome="ok" if answer is Answer.ACCEPTED else "failed",
                reason=None if answer is Answer.ACCEPTED else code,
            )
        )

    async def _infer_while_alive(self, task: InferenceTask, items: _Work, lease: Lease) -> list[int]:
        """:meth:`_infer` while the lease is kept alive. Raises TaskClosed, after cancelling the work, as soon
        as a heartbeat says the task is closed."""
        work = asyncio.create_task(self._infer(task, items))
        keepalive = asyncio.create_task(lease.keep_alive(self.settings.worker_visibility_timeout_s))
        try:
            await asyncio.wait({work, keepalive}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keepalive.cancel()
            stopped = work.cancel()  # False when it finished
            await asyncio.gather(work, keepalive, return_exceptions=True)
        if stopped:
            raise TaskClosed(keepalive.result())
        return work.result()

    async def _infer(self, task: InferenceTask, work: _Work) -> list[int]:
        spec = self.specs.get(task.model)
        if spec is None:
            raise KeyError(f"model {task.model!r} is not served by this worker")
        batcher = self.batchers[task.model]
        results: list[tuple[InstanceOutput, bytes, int] | None] = [None] * len(work.images)
        pending = iter(enumerate(work.images))

        async def lane() -> None:
            """Takes the next image when done with one: the lanes bound the images in flight."""
            for index, (item, rows, cols) in pending:
                raw = await self.images.get_bytes(keys.prepared_key(task.tenant, task.study, task.run_id, item))
                tensor, header = prepared_codec.decode(raw)
                del raw
                result = await batcher.infer(tensor)
                sop = work.plan.items[item].sop
                results[index] = (to_instance_output(sop, (rows, cols), spec, result), header, result.batch_size)

        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as lanes:  # the first failure cancels the other lanes
                for _ in range(min(self.settings.worker_images_in_flight, len(work.images))):
                    lanes.create_task(lane())
        except BaseExceptionGroup as group:
            failure = first_error(group)
        if failure is not None:
            raise failure  # outside the handler: typed as the handlers of _process expect, without the group
        done = [r for r in results if r is not None]
        data = output_codec.encode([r[0] for r in done], [r[1] for r in done])
        await self.images.put_bytes(
            keys.outputs_key(task.tenant, task.study, task.seq, task.run_id),
            data,
            content_type="application/octet-stream",
        )
        index = OutputsIndex(
            run_id=task.run_id,
            seq=task.seq,
            model=task.model,
            full=task.full,
            instances=[work.plan.items[item].key for (item, _, _), r in zip(work.images, results, strict=True) if r],
        )
        await self.images.put_bytes(  # last: an index names only outputs that exist
            keys.outputs_key(task.tenant, task.study, task.seq, task.run_id, ".json"),
            index.model_dump_json().encode(),
            content_type="application/json",
        )
        return [r[2] for r in done]


class _Work:
    """What one run infers: its plan, the prepared items (item, rows, columns), and why others were not."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.images: list[tuple[int, int, int]] = []
        self.undecoded: list[str] = []
