"""Liveness, readiness and Prometheus metrics: no authentication."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from gateway.errors import error_responses
from gateway.health import service
from gateway.services import ServicesDep

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
    """What STOW-RS needs: the images bucket and the status table (results are read only on request)."""
    await service.check_ready(services)
    return Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
