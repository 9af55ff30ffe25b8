"""The RunInference message: what the state machine's ``sqs:sendMessage.waitForTaskToken`` task sends the
inference worker (its ``MessageBody`` in infra/statemachine/pipeline.asl.json), with the task token to
answer. It names the run; what to infer is in the run's plan and shard results (worker/formats/plan.py)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from radstream import keys
from worker.formats.errors import InvalidMessage


@dataclass(frozen=True)
class InferenceTask:
    token: str
    tenant: str
    study: str
    run_id: str
    seq: int
    full: bool
    model: str
    shards: int

    @classmethod
    def parse(cls, body: str) -> InferenceTask:
        try:
            data = json.loads(body)
            task = cls(
                token=str(data["task_token"]),
                tenant=str(data["tenant"]),
                study=str(data["study"]),
                run_id=str(data["run_id"]),
                seq=int(data["seq"]),
                full=bool(data.get("full", False)),
                model=str(data["model"]),
                shards=int(data["shard_count"]),
            )
            keys.run_prefix(task.tenant, task.study, task.run_id)  # names a run of a valid study
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidMessage(f"not a RunInference message: {type(exc).__name__}") from None
        return task


def token_of(body: str) -> str | None:
    """The task token of a message, also of one that is otherwise not a RunInference message."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(body).get("task_token")
        return str(token) if token else None
    return None
