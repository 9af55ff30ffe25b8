"""StartPipeline: the EventBridge target. Starts one execution per manifest, named after it.

EventBridge's Step Functions target cannot name executions, and S3 events are delivered at least once;
naming the execution after the manifest makes a duplicate event a no-op (ExecutionAlreadyExists).
"""

from __future__ import annotations

import hashlib
from typing import Any

from radstream import keys
from radstream.clients import Clients
from radstream.errors import NotFound, StorageError
from worker.formats.errors import ManifestInvalid, TransientError


def execution_name(manifest_key: str) -> str:
    """Deterministic, at most 80 characters of [A-Za-z0-9-_]."""
    _tenant, _study, request_id = keys.parse_manifest_key(manifest_key)
    digest = hashlib.sha256(manifest_key.encode()).hexdigest()[:24]
    return f"{request_id}-{digest}"[:80]


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    bucket, key = event.get("bucket"), event.get("key")
    if not isinstance(key, str):
        raise ManifestInvalid(f"event has no object key: {event!r}"[:300])
    name = execution_name(key)
    try:
        arn = await ctx.stepfunctions.start_execution(
            ctx.settings.state_machine_name, name, {"bucket": bucket, "key": key}
        )
    except (NotFound, StorageError) as exc:
        raise TransientError(f"StartExecution failed: {exc}") from exc
    if arn is None:
        return {"execution": name, "started": False}
    return {"execution": name, "started": True, "executionArn": arn}
