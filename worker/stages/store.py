"""StoreResults: JSON + DICOM SR (+ SEG) of everything inferred for the study, then the run ends.

The results are built from the outputs of every run of the study (the latest output of each instance; a
reprocess supersedes the runs before it), kept under outputs/, which does not expire: a series sent weeks
later still gets results that list every instance. One run of a study is in flight at a time
(worker/stages/runs.py), so no other build interleaves with this one. The SR and SEGs go under the run's
prefix, and result.json, written last, names them.
"""

from __future__ import annotations

import asyncio
import io
from datetime import datetime
from typing import Any

import pydicom

from radstream import keys
from radstream.clients import Clients
from radstream.destinations import of_tenant
from radstream.errors import StorageUnavailable
from radstream.status import NO_MODEL_DETAIL, Run, StudyState, utcnow
from radstream.telemetry import TelemetryEvent
from worker.formats import outputs as output_codec
from worker.formats.errors import ManifestInvalid, TransientError
from worker.formats.plan import OutputsIndex, Plan, ShardResult, effective
from worker.formats.types import InstanceOutput
from worker.results import build_result_document, build_segs, build_sr, dataset_to_bytes
from worker.stages import runs
from worker.stages.common import outputs_indexes, read_plan, timed
from worker.stages.validate import specs_in

READS_IN_FLIGHT = 8


def _build(
    headers: list[pydicom.Dataset],
    outputs: list[InstanceOutput],
    threshold: float,
    not_analysed: list[tuple[str, str]],
    run_prefix: str,
    run_id: str | None = None,
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
            "run_id": run_id,
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


async def _failures(ctx: Clients, run: Run, plan: Plan, shards: int) -> dict[str, str]:
    """Instance key -> why this run could not prepare it."""
    reasons: dict[str, str] = {}
    for shard in range(shards):
        try:
            raw = await ctx.images.get_bytes(keys.shard_key(run.tenant, run.study, run.run_id, shard))
        except StorageUnavailable as exc:
            raise TransientError(exc.detail) from exc
        for item, reason in ShardResult.model_validate_json(raw).failed:
            reasons[plan.items[item].key] = f"could not be decoded: {reason}"
    return reasons


async def _outputs(ctx: Clients, latest: dict[str, tuple[OutputsIndex, int]], run: Run) -> dict[str, list[Any]]:
    """The outputs objects that ``latest`` points into, decoded: outputs key -> [(output, header)]."""
    wanted = sorted({(index.seq, index.run_id) for index, _ in latest.values()})
    slots = asyncio.Semaphore(READS_IN_FLIGHT)

    async def read(seq: int, run_id: str) -> tuple[str, list[Any]]:
        key = keys.outputs_key(run.tenant, run.study, seq, run_id)
        async with slots:
            try:
                raw = await ctx.images.get_bytes(key)
            except StorageUnavailable as exc:
                raise TransientError(exc.detail) from exc
        try:
            return run_id, output_codec.decode(raw)
        except ValueError:
            raise ManifestInvalid(f"the outputs of run {run_id} are not readable") from None

    return dict(await asyncio.gather(*(read(seq, run_id) for seq, run_id in wanted)))


async def _write_results(ctx: Clients, event: dict[str, Any], run: Run, model: str) -> tuple[str, set[str], list[str]]:
    """(the result document's key, the modalities of the instances it covers, the SR's and SEGs' keys)."""
    spec = next(s for s in specs_in(ctx.settings.model_repository) if s.name == model)
    plan = await read_plan(ctx, run.tenant, run.study, run.run_id)
    latest = effective(await outputs_indexes(ctx, run.tenant, run.study), model)
    decoded = await _outputs(ctx, latest, run)
    failures = await _failures(ctx, run, plan, int(event.get("shard_count") or 0)) if event["action"] == "infer" else {}
    pairs: list[tuple[InstanceOutput, bytes]] = []
    not_analysed: list[tuple[str, str]] = []
    for item in plan.routed:  # in the order the requests came
        found = latest.get(item.key)
        if found is None:
            not_analysed.append((item.sop, failures.get(item.key, "not analysed: no output for it")))
            continue
        index, position = found
        pairs.append(decoded[index.run_id][position])
    not_analysed += plan.others
    if not pairs:
        raise ManifestInvalid("no instance of the study has an output to build results from")
    headers: list[pydicom.Dataset] = [pydicom.dcmread(io.BytesIO(raw), force=True) for _, raw in pairs]
    run_prefix = keys.result_key(run.tenant, run.study, f"runs/{run.run_id}")
    document, (sr_key, sr), segs = await asyncio.to_thread(
        _build, headers, [o for o, _ in pairs], spec.outputs.labels.threshold, not_analysed, run_prefix, run.run_id
    )
    await ctx.results.put_bytes(sr_key, sr, content_type="application/dicom")
    for seg_key, seg in segs:
        await ctx.results.put_bytes(seg_key, seg, content_type="application/dicom")
    result_key = keys.result_key(run.tenant, run.study, keys.RESULT_JSON)
    await ctx.results.put_bytes(result_key, document, content_type="application/json")
    return result_key, {str(h.get("Modality", "")) for h in headers}, [sr_key, *(key for key, _ in segs)]


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    run, action = Run.of(event), event["action"]
    tenant, study = run.tenant, run.study
    with timed() as t:
        if action == "no_model":
            result_key = keys.result_key(tenant, study, keys.RESULT_JSON)
            body = {"study_instance_uid": study, "outcome": "no_model", "detail": NO_MODEL_DETAIL, "run_id": run.run_id}
            await ctx.results.put_json(result_key, body)
            model = None
            exports: list[str] = []
            objects: list[str] = []
        else:
            model = event["model"]
            result_key, modalities, objects = await _write_results(ctx, event, run, model)
            exports = [d.name for d in of_tenant(ctx.destinations, tenant) if d.takes(model, modalities)]
        # before the run ends: a follow-up run's results (and their exports) always come after these
        await ctx.status.begin_exports(tenant, study, run.run_id, exports, replace=True)
        follow_up = await runs.conclude(
            ctx,
            run,
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
    return {
        "tenant": tenant,
        "study": study,
        "result": result_key,
        "outcome": "ok" if model else "no_model",
        "follow_up": None if follow_up is None else follow_up.run_id,
        "run_id": run.run_id,
        "exports": exports,  # the Export state's branches: destination names (a tenant's, bounded)
        "export_count": len(exports),
        "objects": objects,  # what they send: the SR's and SEGs' keys (one SEG per geometry group)
    }
