"""Firehose: a pump that delivers Kinesis-sourced delivery streams to S3 (gap 3 in the package docstring)."""

from __future__ import annotations

from datetime import UTC, datetime

from infra.local.emulator.clients import in_process_client

PUMP_INTERVAL_S = 1.0


def _expand_prefix(prefix: str, now: datetime) -> str:
    for token, fmt in (("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H")):
        prefix = prefix.replace(f"!{{timestamp:{token}}}", now.strftime(fmt))
    return prefix


class FirehosePump:
    """Delivers Kinesis-sourced Firehose streams to S3, as the real service would."""

    def __init__(self, region: str) -> None:
        self.firehose = in_process_client("firehose", region)
        self.kinesis = in_process_client("kinesis", region)
        self.s3 = in_process_client("s3", region)
        self._iterators: dict[tuple[str, str], str] = {}
        self._sequence = 0

    def pump_once(self) -> int:
        written = 0
        for name in self.firehose.list_delivery_streams(DeliveryStreamType="KinesisStreamAsSource")[
            "DeliveryStreamNames"
        ]:
            desc = self.firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
            source = desc["Source"]["KinesisStreamSourceDescription"]["KinesisStreamARN"]
            dest = desc["Destinations"][0].get("ExtendedS3DestinationDescription") or desc["Destinations"][0].get(
                "S3DestinationDescription"
            )
            records = self._read(source.split("/")[-1])
            if records:
                now = datetime.now(UTC)
                self._sequence += 1
                key = (
                    f"{_expand_prefix(dest.get('Prefix', ''), now)}{name}-{now:%Y-%m-%d-%H-%M-%S}-{self._sequence:08d}"
                )
                self.s3.put_object(Bucket=dest["BucketARN"].split(":::")[-1], Key=key, Body=b"".join(records))
                written += len(records)
        return written

    def _read(self, stream: str) -> list[bytes]:
        records: list[bytes] = []
        for shard in self.kinesis.list_shards(StreamName=stream)["Shards"]:
            handle = (stream, shard["ShardId"])
            iterator = (
                self._iterators.get(handle)
                or self.kinesis.get_shard_iterator(
                    StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            )
            while True:
                page = self.kinesis.get_records(ShardIterator=iterator, Limit=1000)
                records.extend(r["Data"] for r in page["Records"])
                iterator = page["NextShardIterator"]
                if not page["Records"]:
                    break
            self._iterators[handle] = iterator
        return records
