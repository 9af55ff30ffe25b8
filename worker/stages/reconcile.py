"""Reconcile: the scheduled sweep that leaves no study stranded (EventBridge Scheduler on AWS, every five
minutes; ``radstream up`` runs it on the local stack).

Over the studies with work open longer than ``reconcile_after_s`` (the status table's sparse index
``open-studies``):

* received, with no run: its trigger was lost (the S3 event, or StartPipeline ending in its dead-letter
  queue). A run is asked for and started.
* a run without an execution (claimed, but its start failed): the execution is started.
* a run whose execution ended without ending the run (States.DataLimitExceeded, or MarkFailed itself
  failing): the run is ended as failed, with a reason that says so (or hands over to its follow-up).
* a run in flight longer than ``reconcile_stuck_after_s``: reported.

What it found is returned, logged, and published as CloudWatch metrics in the embedded metric format
(``RadStream/Reconciler``: FoundWork, Stuck), on which the template's alarm fires.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

from radstream.clients import Clients
from radstream.status import StudyState, utcnow
from worker.stages import runs

log = logging.getLogger(__name__)

LISTED = 100  # studies named per kind in the answer (all are counted)
ENDED = {"FAILED", "TIMED_OUT", "ABORTED"}


def _metrics(found: int, stuck: int) -> str:
    """One embedded-metric-format record: CloudWatch Logs turns it into the metrics the alarms watch."""
    return json.dumps(
        {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": "RadStream/Reconciler",
                        "Dimensions": [[]],
                        "Metrics": [{"Name": "FoundWork", "Unit": "Count"}, {"Name": "Stuck", "Unit": "Count"}],
                    }
                ],
            },
            "FoundWork": found,
            "Stuck": stuck,
        }
    )


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    after = timedelta(seconds=ctx.settings.reconcile_after_s)
    stuck_after = timedelta(seconds=ctx.settings.reconcile_stuck_after_s)
    found: dict[str, list[str]] = {"started": [], "restarted": [], "closed": [], "stuck": []}
    async for tenant, study, row in ctx.status.open_studies(before=now - after):
        in_flight = runs.run_of(tenant, study, row)
        if in_flight is None:
            if row.status in (StudyState.COMPLETED.value, StudyState.FAILED.value):
                continue  # ended meanwhile
            await runs.request(ctx, tenant, study)
            found["started"].append(study)
            continue
        if row.started_at is not None and now - row.started_at < after:
            continue
        name = runs.execution_name(tenant, study, in_flight.run_id)
        state = await ctx.stepfunctions.execution_status(ctx.settings.state_machine_name, name)
        if state is None:
            await runs.start(ctx, in_flight)
            found["restarted"].append(study)
        elif state in ENDED or state == "SUCCEEDED":
            reason = (
                f"the run's execution ended {state} before it recorded the outcome "
                "(for example over Step Functions' payload limit); reprocess the study"
            )
            ended = StudyState.COMPLETED if state == "SUCCEEDED" else StudyState.FAILED
            await runs.conclude(ctx, in_flight, ended, failure_reason=None if state == "SUCCEEDED" else reason)
            found["closed"].append(study)
        elif row.started_at is not None and now - row.started_at > stuck_after:
            found["stuck"].append(study)
    work = len(found["started"]) + len(found["restarted"]) + len(found["closed"])
    print(_metrics(work, len(found["stuck"])), flush=True)
    if work or found["stuck"]:
        log.warning("reconciler: %s", {kind: len(studies) for kind, studies in found.items()})
    return {
        **{kind: len(studies) for kind, studies in found.items()},
        "studies": {kind: studies[:LISTED] for kind, studies in found.items() if studies},
    }
