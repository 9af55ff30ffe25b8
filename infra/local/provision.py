"""Create, on the emulator, the resources of infra/resources.py. Idempotent: re-running is a no-op."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from typing import Any

from botocore.exceptions import ClientError

from infra import resources
from infra.resources import ResourceNames
from radstream.aws import config as aws
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
            GlobalSecondaryIndexes=resources.STATUS_TABLE_INDEXES,
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if not _exists_ok(exc, "ResourceInUseException"):
            raise
        # A table made by an earlier release: add the indexes it lacks.
        table = (await ddb.describe_table(TableName=name))["Table"]
        have = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
        for index in resources.STATUS_TABLE_INDEXES:
            if index["IndexName"] not in have:
                await ddb.update_table(
                    TableName=name,
                    AttributeDefinitions=resources.STATUS_TABLE_ATTRIBUTES,
                    GlobalSecondaryIndexUpdates=[{"Create": index}],
                )


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


LOCAL_ROLE = "radstream-local"
_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com", "events.amazonaws.com"]},
            "Action": "sts:AssumeRole",
        }
    ],
}


def _code_zip() -> bytes:
    """Lambda needs a package; the emulator runs the handler from this checkout (see infra/local/emulator/)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "handlers run in-process from the radstream package")
    return buf.getvalue()


async def _role(iam: Any) -> str:
    try:
        role = await iam.create_role(RoleName=LOCAL_ROLE, AssumeRolePolicyDocument=json.dumps(_TRUST))
    except ClientError as exc:
        if not _exists_ok(exc, "EntityAlreadyExists"):
            raise
        role = await iam.get_role(RoleName=LOCAL_ROLE)
    arn: str = role["Role"]["Arn"]
    return arn


async def _function(lam: Any, name: str, handler: str, role: str) -> str:
    try:
        fn = await lam.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role,
            Handler=handler,
            Code={"ZipFile": _code_zip()},
            Timeout=300,
            MemorySize=1024,
        )
    except ClientError as exc:
        if not _exists_ok(exc, "ResourceConflictException"):
            raise
        fn = (await lam.get_function(FunctionName=name))["Configuration"]
    arn: str = fn["FunctionArn"]
    return arn


async def _state_machine(sfn: Any, name: str, definition: str, role: str) -> str:
    for machine in (await sfn.list_state_machines())["stateMachines"]:
        if machine["name"] == name:
            arn: str = machine["stateMachineArn"]
            await sfn.update_state_machine(stateMachineArn=arn, definition=definition)
            return arn
    created = await sfn.create_state_machine(name=name, definition=definition, roleArn=role)
    new_arn: str = created["stateMachineArn"]
    return new_arn


async def _pipeline(settings: Settings, names: ResourceNames, session: Any, kwargs: dict[str, Any]) -> None:
    async with (
        session.client("iam", **kwargs) as iam,
        session.client("lambda", **kwargs) as lam,
        session.client("stepfunctions", **kwargs) as sfn,
        session.client("events", **kwargs) as events,
        session.client("sqs", **kwargs) as sqs,
        session.client("kinesis", **kwargs) as kinesis,
        session.client("firehose", **kwargs) as firehose,
    ):
        role = await _role(iam)
        arns: dict[str, str] = {}
        for suffix, (handler, substitution) in resources.LAMBDA_FUNCTIONS.items():
            arn = await _function(lam, names.function_name(suffix), handler, role)
            if substitution is not None:
                arns[substitution] = arn
        queue_url = (await sqs.get_queue_url(QueueName=names.inference_queue))["QueueUrl"]
        definition = resources.state_machine_definition(
            {**arns, "InferenceQueueUrl": queue_url}, retry_scale=settings.pipeline_retry_scale
        )
        await _state_machine(sfn, names.state_machine, definition, role)

        rule = f"{names.state_machine}-manifests"
        await events.put_rule(
            Name=rule, EventPattern=json.dumps(resources.manifest_event_pattern(names.images_bucket)), State="ENABLED"
        )
        dlq_arn = await _queue_arn(sqs, (await sqs.get_queue_url(QueueName=names.trigger_dlq))["QueueUrl"])
        starter = (await lam.get_function(FunctionName=names.function_name("start-pipeline")))["Configuration"]
        await events.put_targets(
            Rule=rule,
            Targets=[
                {
                    "Id": "start-pipeline",
                    "Arn": starter["FunctionArn"],
                    "InputTransformer": {
                        "InputPathsMap": resources.MANIFEST_INPUT_PATHS,
                        "InputTemplate": resources.MANIFEST_INPUT_TEMPLATE,
                    },
                    "DeadLetterConfig": {"Arn": dlq_arn},
                    "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
                }
            ],
        )
        stream_arn = (await kinesis.describe_stream_summary(StreamName=names.telemetry_stream))[
            "StreamDescriptionSummary"
        ]["StreamARN"]
        existing = (await firehose.list_delivery_streams())["DeliveryStreamNames"]
        if names.firehose not in existing:
            await firehose.create_delivery_stream(
                DeliveryStreamName=names.firehose,
                DeliveryStreamType="KinesisStreamAsSource",
                KinesisStreamSourceConfiguration={"KinesisStreamARN": stream_arn, "RoleARN": role},
                ExtendedS3DestinationConfiguration={
                    "RoleARN": role,
                    "BucketARN": f"arn:aws:s3:::{names.datalake_bucket}",
                    "Prefix": resources.TELEMETRY_PREFIX,
                    "ErrorOutputPrefix": resources.TELEMETRY_ERROR_PREFIX,
                    "BufferingHints": {"IntervalInSeconds": 60, "SizeInMBs": 5},
                },
            )


async def provision(settings: Settings, *, with_pipeline: bool = True) -> ResourceNames:
    """Create every resource the local stack uses; returns their names. ``with_pipeline=False`` stops at
    storage (buckets, table, queues, stream): gateway tests need nothing that reacts to their uploads."""
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
    if with_pipeline:
        await _pipeline(settings, names, session, kwargs)
    log.info("provisioned %s", names)
    return names
