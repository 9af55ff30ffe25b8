"""Telemetry events: typed, versioned, PHI-free; buffered for long-running services. The Kinesis stream they
go to is radstream/aws/kinesis.py (``TelemetryStream.send``, async); ``BufferedTelemetry.emit`` only
buffers (sync) and sends once per interval.

Fields are identifiers and timings only. Nothing here may carry patient names, IDs or birth dates: the
model has no field for them, and ``reason`` strings are built by our code from error class names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

log = logging.getLogger("radstream.telemetry")

SCHEMA_VERSION = "1"
MAX_RECORDS_PER_CALL = 500  # Kinesis PutRecords limit: a full buffer is sent at once

Stage = Literal[
    "stow",
    "association",
    "validate",
    "prepare",
    "inference_queue",
    "inference",
    "store",
    "failed",
    "end_to_end",
    "batch",
    "export",
]
Outcome = Literal["ok", "failed", "no_model", "retry"]


class TelemetryEvent(BaseModel):
    schema_version: str = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    stage: Stage
    tenant: str
    study_uid: str | None = None
    duration_ms: float | None = None
    batch_size: int | None = None
    queue_wait_ms: float | None = None
    model: str | None = None
    outcome: Outcome = "ok"
    reason: str | None = Field(None, max_length=300)
    instances: int | None = None
    destination: str | None = Field(None, max_length=64, description="export: the destination's name")

    def record(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["ts"] = self.ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # Athena/Glue TIMESTAMP format
        return data


CLOSE_TIMEOUT_S = 10.0


class EventSink(Protocol):
    """Where events go: the Kinesis stream (radstream/aws/kinesis.py, ``TelemetryStream``)."""

    async def send(self, *events: TelemetryEvent) -> None: ...


class BufferedTelemetry:
    """Collects events and sends them in one ``PutRecords`` call per interval (or when the buffer fills),
    off the request path. For long-running services (the gateway, the worker); ``close`` flushes what is
    left. One second between sends: a data lake needs no fresher events, and under load each call carries
    more of them (Firehose buffers for a minute anyway)."""

    def __init__(self, stream: EventSink, *, interval_s: float = 1.0, max_buffer: int = 10_000) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._max_buffer = max_buffer
        self._buffer: list[TelemetryEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.dropped = 0

    def emit(self, *events: TelemetryEvent) -> None:
        room = self._max_buffer - len(self._buffer)
        if room < len(events):
            self.dropped += len(events) - max(room, 0)
            log.warning("telemetry buffer full: %d events dropped so far", self.dropped)
        self._buffer.extend(events[: max(room, 0)])
        if len(self._buffer) >= MAX_RECORDS_PER_CALL:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="telemetry-flush")

    async def close(self) -> None:
        """Stop the flush loop after the send it may be in (cancelling it there would lose that batch), then
        send what is left. A loop stuck longer than ``CLOSE_TIMEOUT_S`` is cancelled."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.flush()

    async def flush(self) -> None:
        events, self._buffer = self._buffer, []
        if events:
            await self._stream.send(*events)

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self.flush()
