"""What every stage needs: settings, storage, status table, telemetry, created once per invocation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from radstream.aws import config as aws
from radstream.aws.s3 import ObjectStore
from radstream.settings import Settings
from radstream.status import StatusStore
from radstream.telemetry import Telemetry


@dataclass
class StageContext:
    settings: Settings
    images: ObjectStore
    results: ObjectStore
    status: StatusStore
    telemetry: Telemetry
    sfn: Any
    sqs: Any


@asynccontextmanager
async def stage_context(settings: Settings) -> AsyncIterator[StageContext]:
    session = aws.session(settings)
    kwargs = aws.client_kwargs(settings)
    async with AsyncExitStack() as stack:
        s3 = await stack.enter_async_context(session.client("s3", **kwargs))
        ddb = await stack.enter_async_context(session.client("dynamodb", **kwargs))
        kinesis = await stack.enter_async_context(session.client("kinesis", **kwargs))
        sfn = await stack.enter_async_context(session.client("stepfunctions", **kwargs))
        sqs = await stack.enter_async_context(session.client("sqs", **kwargs))
        yield StageContext(
            settings=settings,
            images=ObjectStore(s3, settings.images_bucket, kms_key_id=settings.kms_key_id),
            results=ObjectStore(s3, settings.results_bucket, kms_key_id=settings.kms_key_id),
            status=StatusStore(ddb, settings.status_table),
            telemetry=Telemetry(kinesis, settings.telemetry_stream),
            sfn=sfn,
            sqs=sqs,
        )
