"""The RunInference message: what the state machine's ``sqs:sendMessage.waitForTaskToken`` task sends the
inference worker (its ``MessageBody`` in infra/statemachine/pipeline.asl.json), with the task token to
answer."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

from worker.formats.errors import InvalidMessage


@dataclass(frozen=True)
class InferenceTask:
    token: str
    tenant: str
    study: str
    request_id: str
    model: str
    images: list[tuple[str, int, int]]  # sop, rows, cols
    undecoded: list[str] = field(default_factory=list)  # why PrepareTensors could not decode an instance

    @classmethod
    def parse(cls, body: str) -> InferenceTask:
        try:
            data = json.loads(body)
            images = [(str(s), int(r), int(c)) for batch in data["prepared"] for s, r, c in batch["prepared"]]
            undecoded = [str(f.get("reason", "")) for batch in data["prepared"] for f in batch.get("failed", [])]
            return cls(
                token=str(data["task_token"]),
                tenant=str(data["tenant"]),
                study=str(data["study"]),
                request_id=str(data["request_id"]),
                model=str(data["model"]),
                images=images,
                undecoded=undecoded,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidMessage(f"not a RunInference message: {type(exc).__name__}: {exc}") from exc


def token_of(body: str) -> str | None:
    """The task token of a message, also of one that is otherwise not a RunInference message."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(body).get("task_token")
        return str(token) if token else None
    return None
