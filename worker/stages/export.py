"""Export: the SR and every SEG of a study's latest results, sent to one destination (one Map branch each).

StoreResults names the tenant's destinations that take the result (their model and modality filters), and
the SR and SEG objects it wrote, and marks each destination ``pending`` for the run; a re-export names no
objects, and its branches send what result.json names. Either way the objects go as stored: the same SOP
Instance UIDs on every retry and re-export, so a PACS stores no second copy. An attempt that meets an
unavailable destination (refused connection, timeout, HTTP 5xx or 429, C-STORE 0xA7xx, a transient
association rejection) is recorded and raised as ``ExportUnavailable``, which the state machine retries
with backoff; past ``export_retry_budget_s`` from the first attempt it is ``ExportGaveUp`` instead. A
refusal (HTTP 4xx, a C-STORE failure status, a permanent rejection) is ``ExportRefused`` at once. Both end
in the branch's Catch (``failed``), which records the destination as failed with the remote's answer; the
study stays ``completed``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from radstream import keys
from radstream.clients import Clients
from radstream.destinations import DicomwebDestination, DimseDestination, of_tenant
from radstream.errors import NotFound, StorageUnavailable
from radstream.status import ExportState, utcnow
from radstream.telemetry import Outcome, TelemetryEvent
from worker.export.send import ExportRefused, ExportUnavailable, send_dicomweb, send_dimse
from worker.formats.errors import ExportGaveUp, ExportRefusedError, ExportUnavailableError, TransientError
from worker.stages.mark_failed import failure_reason


def destination_named(ctx: Clients, tenant: str, name: str) -> DicomwebDestination | DimseDestination:
    for destination in of_tenant(ctx.destinations, tenant):
        if destination.name == name:
            return destination
    raise ExportRefusedError(f"destination {name!r} is not configured for tenant {tenant!r}")


async def _objects(ctx: Clients, tenant: str, study: str, names: list[str] | None) -> list[bytes]:
    """The SR and SEG objects of the latest results: those the state names (StoreResults' result, or the
    re-export's input), else those result.json names. Only keys of this study's results are read."""
    prefix = keys.result_key(tenant, study, "")
    try:
        if names is None:
            document = json.loads(await ctx.results.get_bytes(keys.result_key(tenant, study, keys.RESULT_JSON)))
            names = result_objects(document)
        if not all(isinstance(name, str) and name.startswith(prefix) for name in names):
            raise ExportRefusedError("an object to export is not among the study's results")
        return [await ctx.results.get_bytes(name) for name in names]
    except NotFound:
        raise ExportRefusedError("the study has no results to export") from None
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc


def result_objects(document: dict[str, Any]) -> list[str]:
    """Keys of the SR and every SEG a result document names."""
    names = [r["key"] for r in document.get("structured_reports", []) if r.get("key")]
    return names + [s["key"] for s in document.get("segmentations", []) if s.get("key")]


async def _send(ctx: Clients, destination: DicomwebDestination | DimseDestination, objects: list[bytes]) -> int:
    timeout = ctx.settings.export_timeout_s
    if isinstance(destination, DicomwebDestination):
        return await send_dicomweb(destination, objects, timeout_s=timeout)
    return await asyncio.to_thread(send_dimse, destination, objects, timeout_s=timeout)


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    tenant, study, run_id, name = event["tenant"], event["study"], event["run_id"], event["destination"]
    destination = destination_named(ctx, tenant, name)
    objects = await _objects(ctx, tenant, study, event.get("objects"))
    started = time.perf_counter()
    try:
        accepted = await _send(ctx, destination, objects)
    except (ExportUnavailable, ExportRefused) as exc:
        refused = isinstance(exc, ExportRefused)
        state = ExportState.FAILED if refused else ExportState.PENDING
        entry = await ctx.status.export_attempted(tenant, study, name, run_id, state, exc.reason)
        if entry is None:
            return {"destination": name, "status": "superseded"}
        since = (utcnow() - (entry.first_attempt_at or utcnow())).total_seconds()
        budget = ctx.settings.export_retry_budget_s
        gave_up = refused or since >= budget
        await ctx.telemetry.send(_event(tenant, study, name, started, "failed" if gave_up else "retry", exc))
        if refused:
            raise ExportRefusedError(exc.reason) from None
        if gave_up:
            raise ExportGaveUp(
                f"gave up after {entry.attempts} attempts over {since / 60:.0f} min (the retry budget is "
                f"{budget / 60:.0f} min); last: {exc.reason}"
            ) from None
        raise ExportUnavailableError(exc.reason) from None
    entry = await ctx.status.export_attempted(tenant, study, name, run_id, ExportState.SENT)
    if entry is None:
        return {"destination": name, "status": "superseded"}
    await ctx.telemetry.send(_event(tenant, study, name, started, "ok", None, instances=accepted))
    return {"destination": name, "status": "sent", "objects": accepted, "attempts": entry.attempts}


def _event(
    tenant: str,
    study: str,
    name: str,
    started: float,
    outcome: Outcome,
    exc: Exception | None,
    *,
    instances: int | None = None,
) -> TelemetryEvent:
    return TelemetryEvent(
        stage="export",
        tenant=tenant,
        study_uid=study,
        duration_ms=(time.perf_counter() - started) * 1e3,
        outcome=outcome,
        reason=None if exc is None else type(exc).__name__,
        destination=name,
        instances=instances,
    )


async def failed(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    """The branch's Catch: the destination failed for good, with the reason (the study stays completed)."""
    tenant, study, run_id, name = event["tenant"], event["study"], event["run_id"], event["destination"]
    error = event.get("error") or {}
    reason = _cause(error)
    await ctx.status.export_failed(tenant, study, name, run_id, reason)
    return {"destination": name, "status": "failed"}


def _cause(error: dict[str, Any]) -> str:
    """Our own error's message (the remote's answer, in our words); for an error of the platform (a
    timeout, a crash), its name only."""
    name, reason = failure_reason(error)
    if name in ("ExportRefusedError", "ExportGaveUp", "ExportUnavailableError"):
        return reason.removeprefix(f"{name}: ")
    return f"{name} while exporting"
