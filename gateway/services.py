"""What the routes use, built once in the app's lifespan and injected per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import KeyRing
from gateway.dicomweb.stow import StowService
from gateway.metrics import Metrics
from radstream.aws import config as aws
from radstream.aws.s3 import ObjectStore
from radstream.settings import Settings
from radstream.status import StatusStore
from radstream.telemetry import BufferedTelemetry, Telemetry


@dataclass
class Services:
    settings: Settings
    keyring: KeyRing
    metrics: Metrics
    images: ObjectStore
    results: ObjectStore
    status: StatusStore
    stow: StowService
    stow_slots: asyncio.Semaphore


@asynccontextmanager
async def build_services(settings: Settings, keyring: KeyRing, metrics: Metrics) -> AsyncIterator[Services]:
    session = aws.session(settings)
    async with AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(
            session.client("s3", **aws.client_kwargs(settings, max_pool_connections=128))
        )
        ddb = await stack.enter_async_context(session.client("dynamodb", **aws.client_kwargs(settings)))
        kinesis = await stack.enter_async_context(session.client("kinesis", **aws.client_kwargs(settings)))
        telemetry = BufferedTelemetry(Telemetry(kinesis, settings.telemetry_stream))
        await telemetry.start()
        stack.push_async_callback(telemetry.close)
        images = ObjectStore(s3, settings.images_bucket, kms_key_id=settings.kms_key_id)
        results = ObjectStore(s3, settings.results_bucket, kms_key_id=settings.kms_key_id)
        status = StatusStore(ddb, settings.status_table)
        yield Services(
            settings=settings,
            keyring=keyring,
            metrics=metrics,
            images=images,
            results=results,
            status=status,
            stow=StowService(settings, images, status, metrics, telemetry),
            stow_slots=asyncio.Semaphore(settings.max_concurrent_stow_requests),
        )


def get_services(request: Request) -> Services:
    services: Services = request.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
