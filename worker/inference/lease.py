"""The queue lease: one RunInference message this worker holds, and the task token it answers.

While the worker works on it, the lease keeps the message invisible and heartbeats the task (each on its
own: one failing does not skip the other). An answer (success, or failure with a typed pipeline error) is
sent first and the message deleted after, so a worker killed in between leaves the message to reappear
for another worker. A delete that fails is only logged: the task is closed, so the redelivered message is
dropped after one heartbeat (answered as closed), without inferring again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any

from radstream.aws.sqs import Message, MessageQueue
from radstream.aws.stepfunctions import StepFunctions
from radstream.errors import TaskClosed
from worker.formats.errors import PipelineError

log = logging.getLogger("radstream.worker")

SOON_VISIBLE_S = 1  # visible again almost at once: the queue's redrive policy counts the receive


class Answer(enum.Enum):
    """What became of an answer to the state machine."""

    ACCEPTED = "accepted"  # the task took it; the message is deleted
    CLOSED = "closed"  # the task was closed already (timed out, answered before); the message is deleted
    NOT_SENT = "not_sent"  # it did not go through; the message is left for redelivery


class Lease:
    def __init__(self, queue: MessageQueue, tasks: StepFunctions, message: Message, token: str | None) -> None:
        self.queue = queue
        self.tasks = tasks
        self.message = message
        self.token = token

    async def closed(self) -> str | None:
        """The error code if the task is closed already (one heartbeat), else None."""
        if self.token is None:
            return None
        try:
            await self.tasks.heartbeat(self.token)
        except TaskClosed as exc:
            return exc.code
        except Exception as exc:
            log.warning("task heartbeat failed: %s", type(exc).__name__)
        return None

    async def extend(self, visibility_s: int) -> None:
        """Keep the message invisible ``visibility_s`` more seconds; a failure is logged."""
        try:
            await self.queue.extend(self.message.receipt, visibility_s)
        except Exception as exc:
            log.warning("extending a message's visibility failed: %s", type(exc).__name__)

    async def release(self, after_s: int = SOON_VISIBLE_S) -> None:
        """Leave the message for redelivery after ``after_s`` seconds, unanswered."""
        with contextlib.suppress(Exception):
            await self.queue.extend(self.message.receipt, after_s)

    async def keep_alive(self, visibility_s: int) -> str:
        """Extend the visibility and heartbeat the task until cancelled. Returns the error code when a
        heartbeat says the task is closed."""
        interval = max(1.0, visibility_s / 3)
        while True:
            await asyncio.sleep(interval)
            await self.extend(visibility_s)
            if closed := await self.closed():
                return closed

    async def succeed(self, output: dict[str, Any]) -> tuple[Answer, str]:
        return await self._answer(None, output)

    async def fail(self, error: PipelineError, study: str = "?") -> tuple[Answer, str]:
        log.error("study %s failed: %s: %s", study, type(error).__name__, error.detail[:300])
        return await self._answer(error, None)

    async def _answer(self, error: PipelineError | None, output: dict[str, Any] | None) -> tuple[Answer, str]:
        """Answer the state machine, then delete the message. Returns what became of the answer, and the
        error code when the task was closed already."""
        assert self.token is not None
        try:
            if error is None:
                await self.tasks.succeed(self.token, output or {})
            else:
                await self.tasks.fail(self.token, error)
        except TaskClosed as exc:
            log.info("task already closed (%s); dropping the duplicate message", exc.code)
            await self.delete()
            return Answer.CLOSED, exc.code
        except Exception as exc:
            log.warning("answering the task failed (%s); the message will be redelivered", type(exc).__name__)
            return Answer.NOT_SENT, ""
        await self.delete()
        return Answer.ACCEPTED, ""

    async def delete(self) -> None:
        """Delete a message whose task is answered or closed. A failure is logged, not raised: the task is
        closed, so a redelivery is dropped after one heartbeat."""
        try:
            await self.queue.delete(self.message.receipt)
        except Exception as exc:
            log.warning("deleting an answered message failed (%s); its redelivery will be dropped", type(exc).__name__)
