"""Create, on the emulator, the resources of infra/resources.py. Idempotent: re-running is a no-op."""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from infra import resources
from infra.resources import ResourceNames
from radstream import aws
from radstream.settings import Settings

log = logging.getLogger("radstream.provision")


def _exists_ok(exc: ClientError, *codes: str) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in codes


async def _bucket(s3: Any, name: str, *, eventbridge: bool = False) -> None:
    try:
        await s3.create_bucket(Bucket=name)
    except ClientError as exc:
        if not _exists_ok(exc, "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    await s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    await s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    if eventbridge:
        await s3.put_bucket_notification_configuration(
            Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )


async def _table(ddb: Any, name: str) -> None:
    try:
        await ddb.create_table(
            TableName=name,
            KeySchema=resources.STATUS_TABLE_KEY_SCHEMA,
            AttributeDefinitions=resources.STATUS_TABLE_ATTRIBUTES,
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if not _exists_ok(exc, "ResourceInUseException"):
            raise


async def _queue(sqs: Any, name: str, *, dlq_arn: str | None = None) -> str:
    attributes = {"VisibilityTimeout": str(resources.INFERENCE_VISIBILITY_TIMEOUT_S)}
    if dlq_arn is not None:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(resources.INFERENCE_QUEUE_MAX_RECEIVES)}
        )
    url: str = (await sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
    return url


async def _queue_arn(sqs: Any, url: str) -> str:
    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn: str = attrs["Attributes"]["QueueArn"]
    return arn


async def _stream(kinesis: Any, name: str) -> None:
    try:
        await kinesis.create_stream(StreamName=name, ShardCount=resources.TELEMETRY_SHARDS)
    except ClientError as exc:
        if not _exists_ok(exc, "ResourceInUseException"):
            raise


async def provision(settings: Settings) -> ResourceNames:
    """Create every resource the local stack uses; returns their names."""
    names = ResourceNames.from_settings(settings)
    session = aws.session(settings)
    kwargs = aws.client_kwargs(settings)
    async with (
        session.client("s3", **kwargs) as s3,
        session.client("dynamodb", **kwargs) as ddb,
        session.client("sqs", **kwargs) as sqs,
        session.client("kinesis", **kwargs) as kinesis,
    ):
        await _bucket(s3, names.images_bucket, eventbridge=True)
        await _bucket(s3, names.results_bucket)
        await _bucket(s3, names.datalake_bucket)
        await _table(ddb, names.status_table)
        dlq_url = await _queue(sqs, names.inference_dlq)
        await _queue(sqs, names.inference_queue, dlq_arn=await _queue_arn(sqs, dlq_url))
        await _queue(sqs, names.trigger_dlq)
        await _stream(kinesis, names.telemetry_stream)
    log.info("provisioned %s", names)
    return names
