"""Runs: the pipeline runs over a study, one at a time, each an execution named after the run.

Every request that records instances (STOW-RS, an association), every trigger, a reprocess and the retry of
a failed study ask for a run (:meth:`StatusStore.request_run`). If none is in flight, the asker claims one
and starts its execution; otherwise the run in flight sees, when it ends, that more was asked for since it
began, and hands over to one follow-up run, which covers all of it. So N requests arriving while a run is in
flight cost one more run, not N, and a run never ends leaving a request behind.

A run infers only the instances that have no output yet (a reprocess: all of them) and builds the results
from the outputs of every run of the study (worker/stages/plan.py).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta

from radstream.clients import Clients
from radstream.errors import NotFound, StorageError
from radstream.status import Run, RunRow, StudyState, utcnow
from worker.formats.errors import TransientError

log = logging.getLogger(__name__)

START_GRACE = timedelta(seconds=30)  # a run claimed longer ago than this should have its execution


def execution_name(tenant: str, study: str, run_id: str) -> str:
    """Unique per run, at most 80 characters of [A-Za-z0-9-_]: the study's digest, then the run's id."""
    digest = hashlib.sha256(f"{tenant}/{study}".encode()).hexdigest()[:24]
    return f"{digest}-{run_id}"[:80]


def run_of(tenant: str, study: str, row: RunRow) -> Run | None:
    """The run in flight that ``row`` describes."""
    if row.run_id is None:
        return None
    return Run(tenant, study, row.run_id, row.runs, row.full)


async def start(ctx: Clients, run: Run) -> bool:
    """Start the run's execution; False when it exists already (the name makes this idempotent)."""
    name = execution_name(run.tenant, run.study, run.run_id)
    try:
        arn = await ctx.stepfunctions.start_execution(ctx.settings.state_machine_name, name, run.document())
    except (NotFound, StorageError) as exc:
        raise TransientError(f"StartExecution of run {run.run_id} failed: {type(exc).__name__}") from exc
    if arn is not None:
        log.info("study %s: run %s (%d) started%s", run.study, run.run_id, run.seq, " (full)" if run.full else "")
    return arn is not None


async def request(ctx: Clients, tenant: str, study: str, *, full: bool = False) -> Run | None:
    """Ask for a run of the study and start it if none is in flight. The run started, or None (folded into
    the run in flight, which hands over when it ends)."""
    await ctx.status.request_run(tenant, study, full=full)
    run = await ctx.status.claim_run(tenant, study)
    if run is not None:
        await start(ctx, run)
        return run
    row = await ctx.status.run_row(tenant, study)
    in_flight = None if row is None else run_of(tenant, study, row)
    if in_flight is not None and row is not None and row.started_at and utcnow() - row.started_at > START_GRACE:
        await start(ctx, in_flight)  # claimed, but its start may have failed: starting it again is harmless
    return None


async def conclude(
    ctx: Clients,
    run: Run,
    state: StudyState,
    *,
    stage: str | None = None,
    stage_ms: float | None = None,
    result_location: str | None = None,
    failure_reason: str | None = None,
) -> Run | None:
    """End the run with the study ``state``, or, when more was asked for while it ran, start the follow-up
    run (returned). Safe to repeat: a retry after the run ended or handed over does nothing more (but start
    the follow-up, should that have failed)."""
    if await ctx.status.finish_run(
        run, state, stage=stage, stage_ms=stage_ms, result_location=result_location, failure_reason=failure_reason
    ):
        return None
    follow_up = await ctx.status.hand_over(run.tenant, run.study, run.run_id)
    if follow_up is None:
        row = await ctx.status.run_row(run.tenant, run.study)
        if row is None or row.previous_run != run.run_id or (follow_up := run_of(run.tenant, run.study, row)) is None:
            return None  # ended on an earlier attempt, or it is not the study's run any more
    await start(ctx, follow_up)
    return follow_up
