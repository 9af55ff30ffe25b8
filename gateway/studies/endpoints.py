"""Study status and results (``/v1/studies``)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from gateway.auth import Tenant
from gateway.errors import error_responses
from gateway.params import Uid
from gateway.services import ServicesDep
from gateway.studies import service
from radstream.status import StudyStatus

router = APIRouter(prefix="/v1/studies", tags=["Studies"])


@router.get(
    "/{study}",
    summary="Processing status of a study",
    response_model=StudyStatus,
    responses=error_responses(400, 401, 404, 503),
)
async def study_status(study: Uid, tenant: Tenant, services: ServicesDep) -> StudyStatus:
    return await service.study_status(services, tenant, study)


class ReprocessAccepted(BaseModel):
    study_instance_uid: str
    request_id: str = Field(description="the reprocess request's id")
    status: str = Field(description="where to follow the study's status")


@router.post(
    "/{study}/reprocess",
    summary="Run the pipeline over a study again",
    description="Every instance of the study is inferred again, in a new run; the result routes return its "
    "results once it completes. For a failed study, or after a model changed. 404 for a study this tenant "
    "does not have.",
    status_code=202,
    response_model=ReprocessAccepted,
    responses=error_responses(400, 401, 404, 503),
)
async def study_reprocess(study: Uid, tenant: Tenant, services: ServicesDep) -> ReprocessAccepted:
    return ReprocessAccepted(**await service.reprocess(services, tenant, study))


class ExportRequest(BaseModel):
    destination: str | None = Field(None, description="one destination's name; every destination when left out")


class ExportAccepted(BaseModel):
    study_instance_uid: str
    exports: list[str] = Field(description="the destinations the results are sent to again")
    status: str = Field(description="where to follow each destination's export")


@router.post(
    "/{study}/exports",
    summary="Send a study's results to its export destinations again",
    description="The SR and every SEG of the latest results go again to every destination of the tenant that "
    'takes them, or to the one named in the body (`{"destination": NAME}`), with the same SOP Instance UIDs, '
    "so a PACS keeps one copy. The study's status lists each destination's export. 404 for a study this "
    "tenant does not have or a destination it has not configured; 409 when the study has no results to send "
    "or the tenant no destination.",
    status_code=202,
    response_model=ExportAccepted,
    responses=error_responses(400, 401, 404, 409, 503),
)
async def study_export(
    study: Uid, tenant: Tenant, services: ServicesDep, body: ExportRequest | None = None
) -> ExportAccepted:
    destination = body.destination if body is not None else None
    return ExportAccepted(**await service.export(services, tenant, study, destination))


@router.get(
    "/{study}/results",
    summary="Results of a study (JSON)",
    response_class=Response,
    responses={
        200: {"description": "The result document", "content": {"application/json": {"schema": {"type": "object"}}}},
        **error_responses(400, 401, 404, 503),
    },
)
async def study_results(study: Uid, tenant: Tenant, services: ServicesDep) -> Response:
    return Response(await service.result_json(services, tenant, study), media_type="application/json")


@router.get(
    "/{study}/results/sr",
    summary="Results of a study as a DICOM Structured Report",
    response_class=Response,
    responses={
        200: {
            "description": "DICOM SR (TID 1500), Part 10",
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(400, 401, 404, 503),
    },
)
async def study_results_sr(study: Uid, tenant: Tenant, services: ServicesDep) -> Response:
    return Response(await service.result_sr(services, tenant, study), media_type="application/dicom")


# HEAD wherever GET is (RFC 9110 9.3.2), out of the OpenAPI document, which describes the GETs.
for _path, _endpoint in (
    ("/{study}", study_status),
    ("/{study}/results", study_results),
    ("/{study}/results/sr", study_results_sr),
):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
