"""Telemetry events: typed, versioned, PHI-free; batched to Kinesis with retry of failed records.

Fields are identifiers and timings only. Nothing here may carry patient names, IDs or birth dates: the
model has no field for them, and ``reason`` strings are built by our code from error class names.
"""

from __future__ import annotations

import asyncio
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
