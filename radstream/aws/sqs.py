"""An SQS queue: receive, extend a message's visibility, delete; typed messages, translated errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from radstream.aws.errors import translate

SQS_MAX_BATCH = 10  # ReceiveMessage returns at most this many messages


@dataclass(frozen=True)
class Message:
    body: str
    receipt: str
    receives: int  # ApproximateReceiveCount: 1 on the first delivery
    sent_at_ms: float | None  # SentTimestamp, epoch milliseconds


class MessageQueue:
    """One queue, by URL. Every call raises StorageUnavailable (retry later) or StorageError, never a
    botocore exception."""

    def __init__(self, client: Any, url: str) -> None:
        self._sqs = client
        self.url = url

    @classmethod
    async def named(cls, client: Any, name: str) -> MessageQueue:
        try:
            url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
        except Exception as exc:
            raise translate(exc, "GetQueueUrl") from exc
        return cls(client, str(url))

    async def receive(self, *, max_messages: int, wait_s: int, visibility_s: int) -> list[Message]:
        try:
            response = await self._sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(SQS_MAX_BATCH, max_messages),
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=visibility_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        except Exception as exc:
            raise translate(exc, "ReceiveMessage") from exc
        return [message_of(raw) for raw in response.get("Messages", [])]

    async def extend(self, receipt: str, visibility_s: int) -> None:
        """Keep a held message invisible for ``visibility_s`` more seconds (1: visible again almost at once)."""
        try:
            await self._sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
            )
        except Exception as exc:
            raise translate(exc, "ChangeMessageVisibility") from exc

    async def delete(self, receipt: str) -> None:
        try:
            await self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)
        except Exception as exc:
            raise translate(exc, "DeleteMessage") from exc


def message_of(raw: dict[str, Any]) -> Message:
    """One entry of ReceiveMessage's ``Messages``."""
    attributes = raw.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    return Message(
        body=str(raw.get("Body", "")),
        receipt=str(raw["ReceiptHandle"]),
        receives=int(attributes.get("ApproximateReceiveCount", "1")),
        sent_at_ms=float(sent) if sent is not None else None,
    )
