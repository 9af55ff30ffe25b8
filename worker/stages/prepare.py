"""PrepareTensors: one shard of a run's plan. Check each instance against its manifest checksum, decode its
pixels, and write one prepared object per instance: the model-ready tensor and the pixel-free header.

An instance that cannot be decoded is recorded as failed, with the reason (its class and place, never a
library's message, which may quote the data set), and the shard goes on: the study fails (DecodeFailed,
answered by the worker) only when no shard prepared anything, so one series in an unsupported encoding does
not fail the others. What the shard prepared goes to S3 (worker/formats/plan.py); the state gets counts."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import pydicom

from radstream import keys
from radstream.clients import Clients
from radstream.errors import describe
from radstream.telemetry import TelemetryEvent
from worker.formats import prepared as prepared_codec
from worker.formats.errors import ManifestInvalid
from worker.formats.plan import ShardResult
from worker.models.errors import PreprocessError
from worker.models.preprocess import prepare
from worker.models.spec import ModelSpec
from worker.stages.common import instance_access, read_plan, timed
from worker.stages.validate import specs_in

SHARD_CONCURRENCY = 4  # instances of one shard read, decoded and written at once: storage round trips overlap


def _spec(ctx: Clients, name: str) -> ModelSpec:
    for spec in specs_in(ctx.settings.model_repository):
        if spec.name == name:
            return spec
    raise ManifestInvalid(f"model {name!r} is not in the model repository")


def _decode(data: bytes, spec: ModelSpec) -> tuple[bytes, tuple[int, int]]:
    """(prepared object bytes, source shape); CPU-bound, runs in a thread."""
    ds = pydicom.dcmread(io.BytesIO(data))
    prepared = prepare(ds, spec)
    del ds.PixelData
    header = io.BytesIO()
    ds.save_as(header, enforce_file_format=False)
    return prepared_codec.encode(prepared.tensor, header.getvalue()), prepared.source_shape


def _reason(exc: Exception) -> str:
    """Why an instance could not be prepared: our own words for a PreprocessError (they quote no values),
    the class and place for anything a library raised."""
    return str(exc)[:200] if isinstance(exc, PreprocessError) else describe(exc)


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    tenant, study, model, run_id = event["tenant"], event["study"], event["model"], event["run_id"]
    shard = int(event["shard"])
    with timed() as t:
        plan = await read_plan(ctx, tenant, study, run_id)
        spec = _spec(ctx, model)
        result = ShardResult()
        slots = asyncio.Semaphore(SHARD_CONCURRENCY)

        async def one(index: int) -> tuple[int, tuple[int, int] | str]:
            """(index, source shape) when prepared and stored, (index, reason) when it cannot be."""
            item = plan.items[index]
            async with slots:
                with instance_access(item.sop):
                    data = await ctx.images.get_bytes(item.key)
                # the bytes actually decoded, not the object's metadata, are checked against the manifest
                if hashlib.sha256(data).hexdigest() != item.sha256:
                    raise ManifestInvalid(f"instance {item.sop} does not match its manifest checksum")
                try:
                    encoded, shape = await asyncio.to_thread(_decode, data, spec)
                except (
                    PreprocessError,
                    ValueError,
                    NotImplementedError,
                    RuntimeError,
                    AttributeError,
                    KeyError,
                ) as exc:
                    return index, _reason(exc)
                del data
                await ctx.images.put_bytes(
                    keys.prepared_key(tenant, study, run_id, index), encoded, content_type="application/octet-stream"
                )
                return index, shape

        tasks = [asyncio.ensure_future(one(i)) for i in plan.shard_items(shard)]
        try:
            outcomes = await asyncio.gather(*tasks)
        except BaseException:  # a checksum mismatch fails the shard: the others' work is moot
            for task in tasks:
                task.cancel()
            raise
        for index, outcome in outcomes:
            if isinstance(outcome, str):
                result.failed.append((index, outcome))
            else:
                result.prepared.append((index, outcome[0], outcome[1]))
        await ctx.images.put_bytes(
            keys.shard_key(tenant, study, run_id, shard),
            result.model_dump_json().encode(),
            content_type="application/json",
        )
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="prepare",
            tenant=tenant,
            study_uid=study,
            duration_ms=t.ms,
            model=model,
            instances=len(result.prepared),
        )
    )
    return {"shard": shard, "prepared": len(result.prepared), "failed": len(result.failed)}
