"""Liveness, readiness and Prometheus metrics: no authentication."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from gateway.errors import error_responses
from gateway.services import ServicesDep
from radstream.errors import StorageUnavailable

router = APIRouter(tags=["Health"])


class Health(BaseModel):
    status: str


@router.get("/healthz", summary="The process is alive", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Storage is reachable",
    response_model=Health,
    responses=error_responses(503),
)
async def readyz(services: ServicesDep) -> Health:
    if not await services.images.reachable():
        raise StorageUnavailable(
            f"bucket {services.images.bucket} is not reachable",
            headers={"Retry-After": str(services.settings.storage_retry_after_s)},
        )
    return Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
