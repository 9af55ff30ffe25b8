"""What every domain's routes use (settings, the key ring, metrics, the stores and telemetry), built once in
the app's lifespan and injected per request. A domain's own service is injected by that domain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import KeyRing
from gateway.metrics import Metrics
from radstream.aws.dynamodb import StatusStore
from radstream.aws.s3 import ObjectStore
from radstream.aws.stepfunctions import StepFunctions
from radstream.clients import open_clients
from radstream.destinations import DicomwebDestination, DimseDestination
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry

GATEWAY_S3_CONNECTIONS = 128  # instances of many STOW-RS requests are written at once


@dataclass
class Services:
    settings: Settings
    keyring: KeyRing
    metrics: Metrics
    images: ObjectStore
    results: ObjectStore
    status: StatusStore
    telemetry: BufferedTelemetry
    stow_slots: asyncio.Semaphore
    stepfunctions: StepFunctions
    destinations: list[DicomwebDestination | DimseDestination]


@asynccontextmanager
async def build_services(settings: Settings, keyring: KeyRing, metrics: Metrics) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        clients = await stack.enter_async_context(open_clients(settings, s3_connections=GATEWAY_S3_CONNECTIONS))
        telemetry = BufferedTelemetry(clients.telemetry)
        await telemetry.start()
        stack.push_async_callback(telemetry.close)
        yield Services(
            settings=settings,
            keyring=keyring,
            metrics=metrics,
            images=clients.images,
            results=clients.results,
            status=clients.status,
            telemetry=telemetry,
            stow_slots=asyncio.Semaphore(settings.max_concurrent_stow_requests),
            stepfunctions=clients.stepfunctions,
            destinations=clients.destinations,
        )


def get_services(request: Request) -> Services:
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
