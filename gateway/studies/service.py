"""Study status: state from the status table, counts from the study's manifests: the instances STOW-RS
requests were told are stored (not objects that a failed request left, which a re-send adopts)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from gateway.services import Services
from radstream import keys, manifest
from radstream.destinations import of_tenant
from radstream.errors import Conflict, NotFound
from radstream.status import NO_MODEL_DETAIL, StudyState, StudyStatus


async def study_status(services: Services, tenant: str, study: str) -> StudyStatus:
    listed = await manifest.recorded(services.images, tenant, study)
    series = {instance.series_instance_uid for instance in listed}
    status = await services.status.get(tenant, study, instances=len(listed), series=len(series))
    if status is None:
        raise NotFound(f"study {study} not found")
    return status


async def reprocess(services: Services, tenant: str, study: str) -> dict[str, str]:
    """Ask for a full run of a study this tenant has: every instance is inferred again, and the result
    routes return that run's results once it completes."""
    status = await services.status.get(tenant, study, instances=0, series=0)
    if status is None:
        raise NotFound(f"study {study} not found")
    request_id = await manifest.write_run_request(services.images, tenant, study, full=True)
    return {"study_instance_uid": study, "request_id": request_id, "status": f"/v1/studies/{study}"}


async def result_json(services: Services, tenant: str, study: str) -> bytes:
    return await _result(services, tenant, study, keys.RESULT_JSON)


async def result_sr(services: Services, tenant: str, study: str) -> bytes:
    """The SR that result.json names (each build of the results writes its own; result.json, written
    last, says which one belongs with it). Results written before result.json named its objects have
    the SR under a fixed key."""
    document = json.loads(await result_json(services, tenant, study))
    reports = document.get("structured_reports") or [] if isinstance(document, dict) else []
    key = reports[0].get("key") if reports and isinstance(reports[0], dict) else None
    if isinstance(key, str) and key.startswith(keys.result_key(tenant, study, "")):
        return await services.results.get_bytes(key)
    return await _result(services, tenant, study, keys.RESULT_SR)


async def _result(services: Services, tenant: str, study: str, name: str) -> bytes:
    try:
        return await services.results.get_bytes(keys.result_key(tenant, study, name))
    except NotFound:
        status = await services.status.get(tenant, study, instances=0, series=0)
        if status is None:
            raise NotFound(f"study {study} not found") from None
        if status.status is StudyState.COMPLETED and name == keys.RESULT_SR:
            raise NotFound(f"study {study} has no DICOM SR: {NO_MODEL_DETAIL}") from None
        raise NotFound(f"study {study} has no results yet (status: {status.status.value})") from None


async def export(services: Services, tenant: str, study: str, destination: str | None) -> dict[str, Any]:
    """Send the study's latest results again: to every destination of the tenant that takes them, or to
    ``destination`` alone. The same SR and SEG instances (their SOP Instance UIDs) as before."""
    status = await services.status.get(tenant, study, instances=0, series=0)
    if status is None:
        raise NotFound(f"study {study} not found")
    try:
        document = json.loads(await result_json(services, tenant, study))
    except NotFound:
        raise Conflict(f"study {study} has no results to export yet (it is {status.status.value})") from None
    if not isinstance(document, dict) or document.get("outcome") == "no_model" or not document.get("run_id"):
        raise Conflict(f"study {study} has no SR or SEG to export (no model takes it)")
    configured = {d.name for d in of_tenant(services.destinations, tenant)}
    if destination is not None and destination not in configured:
        raise NotFound(f"export destination {destination!r} is not configured for this tenant")
    names = [destination] if destination is not None else sorted(configured)
    if not names:
        raise Conflict("no export destination is configured for this tenant")
    run_id = str(document["run_id"])
    await services.status.begin_exports(tenant, study, run_id, names, replace=False)
    name = f"export-{uuid.uuid4().hex}"
    # objects None: each branch sends what result.json names when it runs (worker/stages/export.py)
    execution: dict[str, Any] = {
        "action": "export",
        "tenant": tenant,
        "study": study,
        "run_id": run_id,
        "exports": names,
        "objects": None,
    }
    await services.stepfunctions.start_execution(services.settings.state_machine_name, name, execution)
    return {"study_instance_uid": study, "exports": names, "status": f"/v1/studies/{study}"}
