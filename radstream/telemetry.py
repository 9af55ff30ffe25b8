"""Telemetry events: typed, versioned, PHI-free; batched to Kinesis with retry of failed records.

Fields are identifiers and timings only. Nothing here may carry patient names, IDs or birth dates: the
model has no field for them, and ``reason`` strings are built by our code from error class names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger("radstream.telemetry")

SCHEMA_VERSION = "1"
MAX_RECORDS_PER_CALL = 500  # Kinesis PutRecords limit
MAX_ATTEMPTS = 4

Stage = Literal["stow", "validate", "prepare", "inference_queue", "inference", "store", "failed", "end_to_end", "batch"]
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

    def record(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["ts"] = self.ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # Athena/Glue TIMESTAMP format
        return data


class Telemetry:
    """Sends events to the Kinesis stream; failures are logged, never raised into the pipeline."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self.stream = stream

    async def emit(self, *events: TelemetryEvent) -> None:
        for start in range(0, len(events), MAX_RECORDS_PER_CALL):
            await self._put([e.record() for e in events[start : start + MAX_RECORDS_PER_CALL]])

    async def _put(self, records: list[dict[str, Any]]) -> None:
        pending = [
            {"Data": (json.dumps(r, separators=(",", ":")) + "\n").encode(), "PartitionKey": r["study_uid"] or "-"}
            for r in records
        ]
        for attempt in range(MAX_ATTEMPTS):
            try:
                response = await self._kinesis.put_records(StreamName=self.stream, Records=pending)
            except Exception as exc:
                log.warning("telemetry put_records failed (attempt %d): %s", attempt + 1, type(exc).__name__)
            else:
                if not response.get("FailedRecordCount"):
                    return
                pending = [rec for rec, res in zip(pending, response["Records"], strict=True) if "ErrorCode" in res]
            await asyncio.sleep(0.05 * 2**attempt)
        log.error("dropped %d telemetry records after %d attempts", len(pending), MAX_ATTEMPTS)


CLOSE_TIMEOUT_S = 10.0


class BufferedTelemetry:
    """Collects events and sends them in one ``PutRecords`` call per interval (or when the buffer fills),
    off the request path. For long-running services (the gateway, the worker); ``close`` flushes what is
    left. One second between sends: a data lake needs no fresher events, and under load each call carries
    more of them (Firehose buffers for a minute anyway)."""

    def __init__(self, telemetry: Telemetry, *, interval_s: float = 1.0, max_buffer: int = 10_000) -> None:
        self._telemetry = telemetry
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
            await self._telemetry.emit(*events)

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self.flush()
