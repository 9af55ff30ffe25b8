"""PrepareTensors: check each instance against its manifest checksum, decode its pixels, and write one
prepared object per instance: the model-ready tensor and the pixel-free header.

An instance that cannot be decoded is returned as failed, with the reason, and its batch goes on: the
study fails (DecodeFailed, answered by the worker) only when no batch prepared anything, so one series in
an unsupported encoding does not fail the others."""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import pydicom

from radstream import keys
from radstream.clients import Clients
from radstream.errors import NotFound
from radstream.telemetry import TelemetryEvent
from worker.formats import prepared as prepared_codec
from worker.formats.errors import ManifestInvalid
from worker.models.errors import PreprocessError
from worker.models.preprocess import prepare
from worker.models.spec import ModelSpec
from worker.stages.common import instance_access, read_manifest, timed
from worker.stages.validate import specs_in


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


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    tenant, study, model = event["tenant"], event["study"], event["model"]
    indices: list[int] = event["indices"]
    with timed() as t:
        try:
            manifest = await read_manifest(ctx, event["manifest_key"])
        except NotFound as exc:
            raise ManifestInvalid("manifest disappeared during processing") from exc
        spec = _spec(ctx, model)
        prepared: list[list[Any]] = []
        failed: list[dict[str, str]] = []
        for index in indices:
            inst = manifest.instances[index]
            with instance_access(inst.sop_instance_uid):
                data = await ctx.images.get_bytes(inst.key)
            # the bytes actually decoded, not the object's metadata, are checked against the manifest
            if hashlib.sha256(data).hexdigest() != inst.sha256:
                raise ManifestInvalid(f"instance {inst.sop_instance_uid} does not match its manifest checksum")
            try:
                encoded, shape = await asyncio.to_thread(_decode, data, spec)
            except (PreprocessError, ValueError, NotImplementedError, RuntimeError, AttributeError) as exc:
                failed.append({"sop": inst.sop_instance_uid, "reason": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            key = keys.prepared_key(tenant, study, inst.sop_instance_uid)
            await ctx.images.put_bytes(key, encoded, content_type="application/octet-stream")
            prepared.append([inst.sop_instance_uid, shape[0], shape[1]])
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="prepare", tenant=tenant, study_uid=study, duration_ms=t.ms, model=model, instances=len(prepared)
        )
    )
    return {"prepared": prepared, "failed": failed}
