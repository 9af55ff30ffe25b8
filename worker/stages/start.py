"""StartPipeline: the EventBridge target. Starts one execution per manifest, named after it.

EventBridge's Step Functions target cannot name executions, and S3 events are delivered at least once;
naming the execution after the manifest makes a duplicate event a no-op (ExecutionAlreadyExists).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from radstream import keys
from radstream.aws.config import error_code
from worker.formats.errors import ManifestInvalid, TransientError
from worker.stages.context import StageContext

_ARN_CACHE: dict[str, str] = {}


def execution_name(manifest_key: str) -> str:
    """Deterministic, at most 80 characters of [A-Za-z0-9-_]."""
    _tenant, _study, request_id = keys.parse_manifest_key(manifest_key)
    digest = hashlib.sha256(manifest_key.encode()).hexdigest()[:24]
    return f"{request_id}-{digest}"[:80]


async def state_machine_arn(ctx: StageContext) -> str:
    name = ctx.settings.state_machine_name
    if name not in _ARN_CACHE:
        paginator = ctx.sfn.get_paginator("list_state_machines")
        async for page in paginator.paginate():
            for machine in page["stateMachines"]:
                if machine["name"] == name:
                    _ARN_CACHE[name] = machine["stateMachineArn"]
        if name not in _ARN_CACHE:
            raise TransientError(f"state machine {name} not found")
    return _ARN_CACHE[name]


async def run(ctx: StageContext, event: dict[str, Any]) -> dict[str, Any]:
    bucket, key = event.get("bucket"), event.get("key")
    if not isinstance(key, str):
        raise ManifestInvalid(f"event has no object key: {event!r}"[:300])
    name = execution_name(key)
    try:
        response = await ctx.sfn.start_execution(
            stateMachineArn=await state_machine_arn(ctx),
            name=name,
            input=json.dumps({"bucket": bucket, "key": key}),
        )
    except ClientError as exc:
        if error_code(exc) == "ExecutionAlreadyExists":
            return {"execution": name, "started": False}
        raise TransientError(f"StartExecution failed: {exc}") from exc
    return {"execution": name, "started": True, "executionArn": response["executionArn"]}
