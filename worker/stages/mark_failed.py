"""MarkFailed: the Catch of every state. Ends the run with the study failed, with the error's name and
reason; or, when more was asked for while the run was in flight, hands over to the follow-up run, which
tries again (worker/stages/runs.py)."""

from __future__ import annotations

import json
from typing import Any

from radstream.clients import Clients
from radstream.status import Run, StudyState
from radstream.telemetry import TelemetryEvent
from worker.stages import runs


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
    run = Run.of(event)
    name, reason = failure_reason(event.get("error"))
    follow_up = await runs.conclude(ctx, run, StudyState.FAILED, failure_reason=reason)
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="failed",
            tenant=run.tenant,
            study_uid=run.study,
            outcome="failed",
            reason=name,
            model=event.get("model"),
        )
    )
    return {
        "tenant": run.tenant,
        "study": run.study,
        "failed": reason,
        "follow_up": None if follow_up is None else follow_up.run_id,
    }
