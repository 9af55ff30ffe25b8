"""Study status: state from the status table, counts from the study's manifests: the instances STOW-RS
requests were told are stored (not objects that a failed request left, which a re-send adopts)."""

from __future__ import annotations

import json

from gateway.services import Services
from radstream import keys, manifest
from radstream.errors import NotFound
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
