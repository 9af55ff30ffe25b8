"""The FastAPI application: ``create_app()`` builds it; clients are created in ``lifespan``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from gateway import errors
from gateway.auth import KeyRing
from gateway.dicomweb.endpoints import router as dicomweb_router
from gateway.dicomweb.stow import StowService
from gateway.health.endpoints import router as health_router
from gateway.metrics import Metrics, MetricsMiddleware
from gateway.services import build_services
from gateway.studies.endpoints import router as studies_router
from radstream.dicom import keep_values_out_of_logs, read_values_unvalidated
from radstream.settings import Settings, get_settings

DESCRIPTION = """\
RadStream takes DICOM studies in over DICOMweb (STOW-RS), stores every instance durably in S3, runs AI
models on them and returns the results as JSON and as DICOM SR.

Every route except `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <api key>`; a
tenant never sees another tenant's data (it gets 404).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    read_values_unvalidated()
    keep_values_out_of_logs()
    keys = settings.tenant_keys()
    if not keys:
        raise RuntimeError("no API keys configured: set RADSTREAM_API_KEYS=tenant:key,...")
    keyring = KeyRing(keys)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with build_services(settings, keyring, metrics) as services:
            stow = StowService(settings, services.images, services.status, metrics, services.telemetry)
            yield {"services": services, "stow": stow}

    app = FastAPI(
        title="RadStream",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(dicomweb_router)
    app.include_router(studies_router)
    app.include_router(health_router)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
