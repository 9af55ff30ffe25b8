"""Study status: state from the status table, counts from what the object store actually holds."""

from __future__ import annotations

from gateway.services import Services
from radstream import keys
from radstream.errors import NotFound
from radstream.status import StudyStatus


async def study_status(services: Services, tenant: str, study: str) -> StudyStatus:
    prefix = keys.study_prefix(tenant, study)
    stored = await services.images.list_keys(prefix)
    series = {key[len(prefix) :].split("/", 1)[0] for key in stored}
    status = await services.status.get(tenant, study, instances=len(stored), series=len(series))
    if status is None:
        raise NotFound(f"study {study} not found")
    return status
