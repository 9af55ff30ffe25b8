"""The AWS resources RadStream needs, as data: the local stack provisions them from here, and the
tests check that the CloudFormation template declares the same keys and attributes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from radstream.settings import Settings

STATUS_TABLE_KEY_SCHEMA = [
    {"AttributeName": "pk", "KeyType": "HASH"},  # tenant
    {"AttributeName": "sk", "KeyType": "RANGE"},  # study instance UID
]
STATUS_TABLE_ATTRIBUTES = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": "sk", "AttributeType": "S"},
    {"AttributeName": "open_shard", "AttributeType": "S"},
    {"AttributeName": "open_since", "AttributeType": "S"},
]
# Sparse: a row is in it only while its study has work open (received, or a run in flight). The reconciler
# queries it for studies open longer than a bound (worker/stages/reconcile.py).
STATUS_TABLE_INDEXES = [
    {
        "IndexName": "open-studies",
        "KeySchema": [
            {"AttributeName": "open_shard", "KeyType": "HASH"},
            {"AttributeName": "open_since", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
]
INFERENCE_QUEUE_MAX_RECEIVES = 5
INFERENCE_VISIBILITY_TIMEOUT_S = 60
TELEMETRY_SHARDS = 1


@dataclass(frozen=True)
class ResourceNames:
    images_bucket: str
    results_bucket: str
    datalake_bucket: str
    status_table: str
    inference_queue: str
    inference_dlq: str
    trigger_dlq: str
    telemetry_stream: str
    state_machine: str
    firehose: str
    lambda_prefix: str

    def function_name(self, suffix: str) -> str:
        return f"{self.lambda_prefix}-{suffix}"

    @classmethod
    def from_settings(cls, settings: Settings) -> ResourceNames:
        return cls(
            images_bucket=settings.images_bucket,
            results_bucket=settings.results_bucket,
            datalake_bucket=settings.datalake_bucket,
            status_table=settings.status_table,
            inference_queue=settings.inference_queue,
            inference_dlq=f"{settings.inference_queue}-dlq",
            trigger_dlq=f"{settings.state_machine_name}-trigger-dlq",
            telemetry_stream=settings.telemetry_stream,
            state_machine=settings.state_machine_name,
            firehose=f"{settings.telemetry_stream}-to-datalake",
            lambda_prefix="radstream",
        )


# The Lambda functions: name suffix -> (handler, the ASL substitution that names its ARN).
LAMBDA_FUNCTIONS: dict[str, tuple[str, str | None]] = {
    "start-pipeline": ("worker.stages.main.start_pipeline", None),
    "validate-metadata": ("worker.stages.main.validate_metadata", "ValidateMetadataFunctionArn"),
    "prepare-tensors": ("worker.stages.main.prepare_tensors", "PrepareTensorsFunctionArn"),
    "store-results": ("worker.stages.main.store_results", "StoreResultsFunctionArn"),
    "mark-failed": ("worker.stages.main.mark_failed", "MarkFailedFunctionArn"),
    "export": ("worker.stages.main.export_results", "ExportFunctionArn"),
    "reconcile": ("worker.stages.main.reconcile", None),
}
STATE_MACHINE_FILE = Path(__file__).resolve().parent / "statemachine" / "pipeline.asl.json"
TELEMETRY_PREFIX = "telemetry/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/"
TELEMETRY_ERROR_PREFIX = "telemetry-errors/!{firehose:error-output-type}/"


def manifest_event_pattern(images_bucket: str) -> dict[str, object]:
    """EventBridge pattern: objects created under manifests/ in the images bucket."""
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [images_bucket]}, "object": {"key": [{"prefix": "manifests/"}]}},
    }


MANIFEST_INPUT_PATHS = {"bucket": "$.detail.bucket.name", "key": "$.detail.object.key"}
MANIFEST_INPUT_TEMPLATE = '{"bucket": "<bucket>", "key": "<key>"}'


def state_machine_definition(substitutions: dict[str, str], *, retry_scale: float = 1.0) -> str:
    """The ASL file with ``${Name}`` replaced, as CloudFormation's DefinitionSubstitutions does.

    ``retry_scale`` < 1 (local test stacks only) shortens every Retry's intervals, so that a test of a retry
    budget runs in seconds; the attempts, errors and backoff stay as they are."""
    text = STATE_MACHINE_FILE.read_text()
    for name, value in substitutions.items():
        text = text.replace("${" + name + "}", value)
    if "${" in text:
        raise ValueError("state machine definition has unfilled substitutions")
    if retry_scale == 1.0:
        return text
    document = json.loads(text)
    _scale_retries(document, retry_scale)
    return json.dumps(document)


def _scale_retries(node: object, scale: float) -> None:
    if isinstance(node, dict):
        for retrier in node.get("Retry", []):
            retrier["IntervalSeconds"] = max(1, round(retrier.get("IntervalSeconds", 1) * scale))
            if "MaxDelaySeconds" in retrier:
                retrier["MaxDelaySeconds"] = max(1, round(retrier["MaxDelaySeconds"] * scale))
            if scale < 0.1:
                retrier["BackoffRate"] = 1.0
        for value in node.values():
            _scale_retries(value, scale)
    elif isinstance(node, list):
        for value in node:
            _scale_retries(value, scale)
