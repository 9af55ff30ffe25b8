"""The telemetry stream in Kinesis: events batched into PutRecords calls, failed records retried."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from radstream.telemetry import MAX_RECORDS_PER_CALL, TelemetryEvent

log = logging.getLogger("radstream.telemetry")

MAX_ATTEMPTS = 4


class TelemetryStream:
    """Sends events to the Kinesis stream; failures are logged, never raised into the pipeline."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self.stream = stream

    async def send(self, *events: TelemetryEvent) -> None:
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
