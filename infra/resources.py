"""The AWS resources RadStream needs, as data: the local stack provisions them from here, and the
tests check that the CloudFormation template declares the same keys and attributes."""

from __future__ import annotations

from dataclasses import dataclass

from radstream.settings import Settings

STATUS_TABLE_KEY_SCHEMA = [
    {"AttributeName": "pk", "KeyType": "HASH"},  # tenant
    {"AttributeName": "sk", "KeyType": "RANGE"},  # study instance UID
]
STATUS_TABLE_ATTRIBUTES = [
    {"AttributeName": "pk", "AttributeType": "S"},
    {"AttributeName": "sk", "AttributeType": "S"},
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
        )
