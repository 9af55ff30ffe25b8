"""BufferedTelemetry (gateway, worker): batching off the request path, nothing lost at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from radstream.aws.kinesis import TelemetryStream
from radstream.telemetry import BufferedTelemetry, TelemetryEvent


class SlowKinesis:
    """A Kinesis client whose PutRecords takes a while and records what it accepted."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls: list[list[dict[str, Any]]] = []
        self.started = asyncio.Event()

    async def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.started.set()
        await asyncio.sleep(self.delay_s)
        self.calls.append(Records)
        return {"FailedRecordCount": 0, "Records": [{} for _ in Records]}


def _event(i: int) -> TelemetryEvent:
    return TelemetryEvent(stage="stow", tenant="t", study_uid=f"1.2.{i}", duration_ms=1.0)


async def test_events_leave_in_batches_not_one_call_each() -> None:
    kinesis = SlowKinesis(delay_s=0.0)
    buffered = BufferedTelemetry(TelemetryStream(kinesis, "s"), interval_s=0.2)
    await buffered.start()
    for i in range(25):
        buffered.emit(_event(i))
    await asyncio.sleep(0.5)
    await buffered.close()
    assert sum(len(call) for call in kinesis.calls) == 25
    assert len(kinesis.calls) == 1


async def test_close_during_a_send_loses_nothing() -> None:
    kinesis = SlowKinesis(delay_s=0.3)
    buffered = BufferedTelemetry(TelemetryStream(kinesis, "s"), interval_s=0.05)
    await buffered.start()
    for i in range(10):
        buffered.emit(_event(i))
    await asyncio.wait_for(kinesis.started.wait(), 5)  # the loop is inside PutRecords with all ten
    buffered.emit(_event(10))
    await buffered.close()
    sent = sorted(record["PartitionKey"] for call in kinesis.calls for record in call)
    assert sent == sorted(f"1.2.{i}" for i in range(11))
