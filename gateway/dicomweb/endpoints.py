"""DICOMweb routes: STOW-RS (PS3.18 10.5) and WADO-RS study and instance retrieval (PS3.18 10.4)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import Tenant
from gateway.dicomweb import wado
from gateway.dicomweb.responses import DICOM_JSON, store_instances_response
from gateway.dicomweb.stow import StowDep
from gateway.errors import ErrorBody, error_responses
from gateway.params import Uid
from gateway.services import ServicesDep
from radstream.errors import RESOURCE_REASONS, NotAcceptable, NotFound, ServiceBusy

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

_STORE_EXAMPLE = {
    "00081190": {"vr": "UR", "Value": ["http://127.0.0.1:8080/dicomweb/studies/1.2.3"]},
    "00081199": {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                "00081155": {"vr": "UI", "Value": ["1.2.3.4.5"]},
                "00081190": {
                    "vr": "UR",
                    "Value": ["http://127.0.0.1:8080/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"],
                },
            }
        ],
    },
}
_FAILED_EXAMPLE = {
    "00081198": {
        "vr": "SQ",
        "Value": [
            {
                "00081155": {"vr": "UI", "Value": ["1.2.3.4.6"]},
                "00081197": {"vr": "US", "Value": [0xA900]},
                "00000902": {
                    "vr": "LO",
                    "Value": ["StudyInstanceUID 1.2.9 does not match 1.2.3 in the path"],
                },
            }
        ],
    }
}


def _store_response(status: int, description: str, example: dict[str, Any]) -> dict[int | str, Any]:
    return {
        status: {
            "description": description,
            "content": {DICOM_JSON: {"schema": {"type": "object"}, "example": example}},
        }
    }


_STOW_RESPONSES: dict[int | str, Any] = {
    **_store_response(200, "Every instance was stored (or was stored already with identical bytes)", _STORE_EXAMPLE),
    **_store_response(202, "Some instances stored, some failed or stored with warnings", _STORE_EXAMPLE),
    **error_responses(401, 413, 415),
    **_store_response(400, "Nothing stored: the body could not be understood", _FAILED_EXAMPLE),
    **_store_response(409, "Nothing stored: every instance conflicts (study UID, duplicate, syntax)", _FAILED_EXAMPLE),
    **_store_response(503, "Nothing stored: storage unavailable or gateway at capacity; retry later", _FAILED_EXAMPLE),
}
# A request refused before any part is read (no boundary, an invalid UID in the path, every upload slot busy,
# the manifest not written) is answered with the error body of every other route.
for _code in (400, 503):
    _STOW_RESPONSES[_code]["content"]["application/json"] = {"schema": ErrorBody.model_json_schema()}
_STOW_RESPONSES[503]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_STOW_BODY = {
    "requestBody": {
        "required": True,
        "description": 'multipart/related; type="application/dicom": one DICOM Part 10 instance per part',
        "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
    }
}


async def _stow(request: Request, services: ServicesDep, stow: StowDep, tenant: str, study: str | None) -> JSONResponse:
    retry_after = {"Retry-After": str(services.settings.storage_retry_after_s)}
    if services.stow_slots.locked():
        raise ServiceBusy("too many concurrent uploads; retry later", headers=retry_after)
    length = request.headers.get("content-length")
    async with services.stow_slots:
        outcome = await stow.store(
            tenant=tenant,
            path_study_uid=study,
            content_type=request.headers.get("content-type"),
            content_length=int(length) if length and length.isdigit() else None,
            body=request.stream(),
        )
    status = outcome.http_status
    # a 503, or a 202 that refused some instances for want of storage: say when to send those again
    short = any(f.reason in RESOURCE_REASONS for f in outcome.failed)
    headers = retry_after if status == 503 or (status == 202 and short) else None
    body = store_instances_response(services.settings.base_url, outcome)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON, headers=headers)


@router.post(
    "/studies",
    summary="Store instances (STOW-RS)",
    response_class=JSONResponse,
    responses=_STOW_RESPONSES,
    openapi_extra=_STOW_BODY,
)
async def store_instances(request: Request, services: ServicesDep, stow: StowDep, tenant: Tenant) -> JSONResponse:
    return await _stow(request, services, stow, tenant, None)


@router.post(
    "/studies/{study}",
    summary="Store instances of one study (STOW-RS)",
    response_class=JSONResponse,
    responses=_STOW_RESPONSES,
    openapi_extra=_STOW_BODY,
)
async def store_study_instances(
    request: Request, services: ServicesDep, stow: StowDep, tenant: Tenant, study: Uid
) -> JSONResponse:
    return await _stow(request, services, stow, tenant, study)


@router.get(
    "/studies/{study}",
    summary="Retrieve a study (WADO-RS)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every instance of the study that a STOW-RS request was told is stored, unchanged, "
            "one part each",
            "content": {
                'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}
            },
        },
        **error_responses(400, 401, 404, 406, 503),
    },
)
async def retrieve_study(
    request: Request,
    services: ServicesDep,
    tenant: Tenant,
    study: Uid,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    # Instances are returned as stored, possibly in different transfer syntaxes: no single one is promised.
    if not any(c.media == wado.MULTIPART and c.transfer_syntax is None for c in wado.acceptable(accept)):
        raise NotAcceptable(
            'a study is retrieved as multipart/related; type="application/dicom" (one part per instance, each '
            "as stored), without a transfer-syntax parameter or with transfer-syntax=*"
        )
    instances = await wado.recorded_instances(services.images, tenant, study)
    if not instances:
        raise NotFound(f"study {study} not found")
    boundary = uuid.uuid4().hex
    media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if request.method == "HEAD":  # what GET would answer, without reading a single instance
        return StreamingResponse(_nothing(), media_type=media_type)
    return StreamingResponse(wado.study_multipart(services.images, instances, boundary), media_type=media_type)


async def _nothing() -> AsyncGenerator[bytes, None]:
    return
    yield b""


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="Retrieve an instance (WADO-RS)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The stored bytes, unchanged",
            "content": {
                'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **error_responses(400, 401, 404, 406, 503),
    },
)
async def retrieve_instance(
    request: Request,
    services: ServicesDep,
    tenant: Tenant,
    study: Uid,
    series: Uid,
    instance: Uid,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    key = wado.key_for(tenant, study, series, instance)
    try:
        if request.method == "HEAD":  # GET's status and headers from the object's metadata, no body read
            head, empty = await services.images.head(key), _nothing()
            stored = wado.OpenInstance(head.size, head.transfer_syntax, empty, empty.aclose)
        else:
            stored = await wado.open_instance(services.images, key)
    except NotFound:  # the message would name the storage key
        raise NotFound(f"instance {instance} of series {series} of study {study} not found") from None

    async def syntax() -> str | None:
        return stored.transfer_syntax

    try:
        choice = await wado.negotiate(accept, syntax)
    except NotAcceptable:
        await stored.close()
        raise
    part_type = wado.part_content_type(stored.transfer_syntax)
    if choice.media == wado.SINGLE:
        return StreamingResponse(stored.chunks, media_type=part_type, headers={"Content-Length": str(stored.size)})
    boundary = uuid.uuid4().hex
    return StreamingResponse(
        wado.multipart(stored.chunks, boundary, part_type),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


# HEAD wherever GET is (RFC 9110 9.3.2), out of the OpenAPI document, which describes the GETs.
for _path, _endpoint in (
    ("/studies/{study}", retrieve_study),
    ("/studies/{study}/series/{series}/instances/{instance}", retrieve_instance),
):
    router.add_api_route(_path, _endpoint, methods=["HEAD"], include_in_schema=False)
