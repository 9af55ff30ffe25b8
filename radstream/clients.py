"""The composition root: the one place that builds the AWS clients and the typed stores over them.

The gateway (in its lifespan), the Lambda stages (once per runtime) and the inference worker (at start)
each open one :class:`Clients` and pass what they need on; nothing else creates an AWS client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from radstream.aws import config
from radstream.aws.dynamodb import StatusStore
from radstream.aws.errors import translate
from radstream.aws.kinesis import TelemetryStream
from radstream.aws.s3 import ObjectStore
from radstream.aws.sqs import MessageQueue
from radstream.aws.stepfunctions import StepFunctions
from radstream.destinations import DicomwebDestination, DimseDestination, parse_destinations
from radstream.settings import Settings

DEFAULT_S3_CONNECTIONS = 64


@dataclass
class Clients:
    settings: Settings
    images: ObjectStore
    results: ObjectStore
    status: StatusStore
    telemetry: TelemetryStream
    stepfunctions: StepFunctions
    _sqs: Any  # open its queues with :meth:`queue`
    destinations: list[DicomwebDestination | DimseDestination]

    async def queue(self, name: str) -> MessageQueue:
        return await MessageQueue.named(self._sqs, name)


async def _destinations(settings: Settings, session: Any) -> list[DicomwebDestination | DimseDestination]:
    """The export destinations: from Secrets Manager when a secret is named, else from the setting."""
    if settings.export_destinations_secret_arn:
        async with session.client("secretsmanager", **config.client_kwargs(settings)) as secrets:
            try:
                secret = await secrets.get_secret_value(SecretId=settings.export_destinations_secret_arn)
            except Exception as exc:
                raise translate(exc, "GetSecretValue") from exc
        return parse_destinations(secret.get("SecretString"))
    raw = settings.export_destinations
    return parse_destinations(None if raw is None else raw.get_secret_value())


@asynccontextmanager
async def open_clients(settings: Settings, *, s3_connections: int = DEFAULT_S3_CONNECTIONS) -> AsyncIterator[Clients]:
    """Every client of this process, closed on exit. ``s3_connections`` bounds S3's connection pool (the
    gateway writes many instances at once)."""
    session = config.session(settings)
    kwargs = config.client_kwargs(settings)
    async with AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(
            session.client("s3", **config.client_kwargs(settings, max_pool_connections=s3_connections))
        )
        ddb = await stack.enter_async_context(session.client("dynamodb", **kwargs))
        kinesis = await stack.enter_async_context(session.client("kinesis", **kwargs))
        sfn = await stack.enter_async_context(session.client("stepfunctions", **kwargs))
        sqs = await stack.enter_async_context(session.client("sqs", **kwargs))
        destinations = await _destinations(settings, session)
        yield Clients(
            settings=settings,
            images=ObjectStore(s3, settings.images_bucket, kms_key_id=settings.kms_key_id),
            results=ObjectStore(s3, settings.results_bucket, kms_key_id=settings.kms_key_id),
            status=StatusStore(ddb, settings.status_table),
            telemetry=TelemetryStream(kinesis, settings.telemetry_stream),
            stepfunctions=StepFunctions(sfn),
            _sqs=sqs,
            destinations=destinations,
        )
