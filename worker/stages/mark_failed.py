"""MarkFailed: the Catch of every state. Records the study as failed with the error's name and reason."""

from __future__ import annotations

import json
from typing import Any

from radstream import keys
from radstream.clients import Clients
from radstream.status import StudyState
from radstream.telemetry import TelemetryEvent


def failure_reason(error: dict[str, Any] | None) -> tuple[str, str]:
    """(error name, human-readable reason) from a Step Functions Catch ``$.error`` object."""
    if not error:
        return "Unknown", "the pipeline failed without an error description"
    name = str(error.get("Error", "Unknown"))
    cause = str(error.get("Cause", ""))
    try:
        parsed = json.loads(cause)
        if isinstance(parsed, dict):
            cause = str(parsed.get("errorMessage", cause))
    except ValueError:
        pass
    return name, f"{name}: {cause}"[:500]


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    if "tenant" in event:
        tenant, study = event["tenant"], event["study"]
    else:  # ValidateMetadata failed: the input is still the trigger's {bucket, key}
        tenant, study, _ = keys.parse_manifest_key(str(event.get("key")))
    name, reason = failure_reason(event.get("error"))
    await ctx.status.set_state(tenant, study, StudyState.FAILED, failure_reason=reason)
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="failed", tenant=tenant, study_uid=study, outcome="failed", reason=name, model=event.get("model")
        )
    )
    return {"tenant": tenant, "study": study, "failed": reason}
