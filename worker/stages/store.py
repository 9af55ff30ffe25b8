"""StoreResults: JSON + DICOM SR (+ SEG) of everything inferred for the study, then status completed."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime
from typing import Any

import pydicom

from radstream import keys
from radstream.clients import Clients
from radstream.status import NO_MODEL_DETAIL, StudyState, utcnow
from radstream.telemetry import TelemetryEvent
from worker.formats import outputs as output_codec
from worker.formats.errors import TransientError
from worker.formats.types import InstanceOutput
from worker.results import build_result_document, build_segs, build_sr, dataset_to_bytes
from worker.stages.common import read_manifest, timed
from worker.stages.validate import specs_in

MAX_RESULT_BUILDS = 5


def _build(
    headers: list[pydicom.Dataset],
    outputs: list[InstanceOutput],
    threshold: float,
    not_analysed: list[tuple[str, str]],
    run_prefix: str,
) -> tuple[bytes, tuple[str, bytes], list[tuple[str, bytes]]]:
    """(result JSON, (SR key, bytes), [(SEG key, bytes)]); CPU-bound, runs in a thread. The DICOM objects go
    under ``run_prefix``, and the document names their keys."""
    sr = build_sr(headers, outputs, threshold=threshold)
    segs = build_segs(headers, outputs, threshold)
    document = build_result_document(
        headers, outputs, threshold, structured_report=sr, segmentations=segs, not_analysed=not_analysed
    )
    sr_key = f"{run_prefix}/{keys.RESULT_SR}"
    seg_keys = [f"{run_prefix}/seg-{i}.dcm" for i in range(len(segs))]
    document = document.model_copy(
        update={
            "structured_reports": tuple(r.model_copy(update={"key": sr_key}) for r in document.structured_reports),
            "segmentations": tuple(
                r.model_copy(update={"key": k}) for r, k in zip(document.segmentations, seg_keys, strict=True)
            ),
        }
    )
    return (
        document.model_dump_json().encode(),
        (sr_key, dataset_to_bytes(sr)),
        [(k, dataset_to_bytes(s)) for k, s in zip(seg_keys, segs, strict=True)],
    )


async def _not_analysed(ctx: Clients, event: dict[str, Any], analysed: set[str]) -> list[tuple[str, str]]:
    """Instances of this execution's manifest without a result, with the reason."""
    reasons = {
        failure["sop"]: f"could not be decoded: {failure['reason']}"
        for batch in event.get("prepared", [])
        for failure in batch.get("failed", [])
    }
    if not reasons and event.get("skipped") == 0:
        return []  # every instance was routed to the model and prepared, so every one has an output
    manifest = await read_manifest(ctx, event["manifest_key"])
    missing = []
    for inst in manifest.instances:
        if inst.sop_instance_uid not in analysed:
            default = f"{NO_MODEL_DETAIL} (modality {inst.modality or 'unknown'}, SOP class {inst.sop_class_uid})"
            missing.append((inst.sop_instance_uid, reasons.get(inst.sop_instance_uid, default)))
    return missing


async def _outputs_keys(ctx: Clients, tenant: str, study: str) -> list[str]:
    return sorted(await ctx.images.list_keys(keys.outputs_prefix(tenant, study)))


async def _study_outputs(ctx: Clients, output_keys: list[str]) -> list[tuple[InstanceOutput, bytes]]:
    """Outputs, with their source headers, of every execution of this study so far (one study may arrive in
    several requests); the latest output per instance."""
    by_sop: dict[str, tuple[InstanceOutput, bytes]] = {}
    for key in output_keys:
        for out, header in output_codec.decode(await ctx.images.get_bytes(key)):
            by_sop[out.sop_instance_uid] = (out, header)
    return list(by_sop.values())


async def _write_results(ctx: Clients, event: dict[str, Any], tenant: str, study: str, model: str) -> None:
    """Build and write the study's results from every execution's outputs, until they include every output
    written meanwhile.

    Executions of one study (several STOW requests) run concurrently. One that listed the outputs before
    another's were written could finish writing after that other one and leave results without its
    instances; so after writing, the outputs are listed again, and the results rebuilt if there are new
    ones. Any output written after that listing belongs to an execution whose own StoreResults starts later
    and covers it. The SR and SEGs of each build go under a prefix of their own and result.json, written
    last, names them: whatever two builds interleave, result.json and the objects it names belong together.
    """
    spec = next(s for s in specs_in(ctx.settings.model_repository) if s.name == model)
    result_key = keys.result_key(tenant, study, keys.RESULT_JSON)
    output_keys = await _outputs_keys(ctx, tenant, study)
    for _ in range(MAX_RESULT_BUILDS):
        pairs = await _study_outputs(ctx, output_keys)
        outputs = [output for output, _ in pairs]
        headers: list[pydicom.Dataset] = [pydicom.dcmread(io.BytesIO(raw), force=True) for _, raw in pairs]
        not_analysed = await _not_analysed(ctx, event, {o.sop_instance_uid for o in outputs})
        run_prefix = keys.result_key(tenant, study, f"runs/{keys.new_request_id()}")
        document, (sr_key, sr), segs = await asyncio.to_thread(
            _build, headers, outputs, spec.outputs.labels.threshold, not_analysed, run_prefix
        )
        await ctx.results.put_bytes(sr_key, sr, content_type="application/dicom")
        for seg_key, seg in segs:
            await ctx.results.put_bytes(seg_key, seg, content_type="application/dicom")
        await ctx.results.put_bytes(result_key, document, content_type="application/json")
        latest = await _outputs_keys(ctx, tenant, study)
        if latest == output_keys:
            return
        output_keys = latest
    # Still changing: the results just written may lack outputs whose own StoreResults has finished
    # already, so this one must not end here. Step Functions retries it (with backoff) later.
    raise TransientError(f"the study's outputs changed during {MAX_RESULT_BUILDS} builds of its results")


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    tenant, study, action = event["tenant"], event["study"], event["action"]
    if action == "skip":
        return {"tenant": tenant, "study": study, "result": None}
    with timed() as t:
        result_key = keys.result_key(tenant, study, keys.RESULT_JSON)
        if action == "no_model":
            body = {"study_instance_uid": study, "outcome": "no_model", "detail": NO_MODEL_DETAIL}
            await ctx.results.put_json(result_key, body)
            model = None
        else:
            model = event["model"]
            await _write_results(ctx, event, tenant, study, model)
        await ctx.status.set_state(
            tenant,
            study,
            StudyState.COMPLETED,
            stage="store",
            stage_ms=t.ms,
            result_location=f"s3://{ctx.results.bucket}/{result_key}",
        )
    received_at = datetime.fromisoformat(event["received_at"]) if event.get("received_at") else None
    end_to_end_ms = (utcnow() - received_at).total_seconds() * 1e3 if received_at else None
    await ctx.telemetry.send(
        TelemetryEvent(stage="store", tenant=tenant, study_uid=study, duration_ms=t.ms, model=model),
        TelemetryEvent(
            stage="end_to_end",
            tenant=tenant,
            study_uid=study,
            duration_ms=end_to_end_ms,
            model=model,
            outcome="ok" if model else "no_model",
        ),
    )
    return {"tenant": tenant, "study": study, "result": result_key, "outcome": "ok" if model else "no_model"}
