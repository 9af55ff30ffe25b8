"""Study status and results (``/v1/studies``)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.auth import Tenant
from gateway.dicomweb.endpoints import Uid
from gateway.errors import error_responses
from gateway.services import ServicesDep
from gateway.studies import service
from radstream.status import StudyStatus

router = APIRouter(prefix="/v1/studies", tags=["Studies"])


@router.get(
    "/{study}",
    summary="Processing status of a study",
    response_model=StudyStatus,
    responses=error_responses(401, 404, 422, 503),
)
async def study_status(study: Uid, tenant: Tenant, services: ServicesDep) -> StudyStatus:
    return await service.study_status(services, tenant, study)
