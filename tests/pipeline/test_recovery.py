"""Runs, re-runs and the reconciler on the embedded stack: nothing requested is left behind, nothing
acknowledged is processed twice, and a lost trigger or a run without its execution is picked up."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from radstream import keys
from radstream.clients import open_clients
from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import ct_study, executions_for, send, wait_execution
from worker.formats.plan import OutputsIndex
from worker.stages.runs import execution_name


def indexes(stack: Stack, study: str) -> list[OutputsIndex]:
    s3 = stack.client("s3")
    listing = s3.list_objects_v2(Bucket=stack.settings.images_bucket, Prefix=keys.outputs_prefix("alpha", study))
    return [
        OutputsIndex.model_validate_json(
            s3.get_object(Bucket=stack.settings.images_bucket, Key=o["Key"])["Body"].read()
        )
        for o in listing.get("Contents", [])
        if o["Key"].endswith(".json")
    ]


def results(stack: Stack, study: str) -> dict[str, object]:
    response = httpx.get(f"{stack.url}/v1/studies/{study}/results", headers=stack.auth)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.fixture
def trigger_lost(stack: Stack) -> Iterator[None]:
    """The manifests' EventBridge rule disabled: S3 events of new manifests reach no StartPipeline."""
    events = stack.client("events")
    rule = f"{stack.settings.state_machine_name}-manifests"
    events.disable_rule(Name=rule)
    try:
        yield
    finally:
        events.enable_rule(Name=rule)


def test_reprocess_infers_every_instance_again_in_a_new_run(stack: Stack) -> None:
    uids, datasets = ct_study(3)
    send(stack, datasets)
    first = stack.wait_status(uids.study, ("completed",))
    response = httpx.post(f"{stack.url}/v1/studies/{uids.study}/reprocess", headers=stack.auth)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == f"/v1/studies/{uids.study}"
    deadline = time.monotonic() + 60
    while (status := stack.status(uids.study))["run_id"] == first["run_id"] or status["status"] != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["runs"] == 2
    assert results(stack, uids.study)["run_id"] == status["run_id"]  # the latest completed run's results
    runs = sorted(indexes(stack, uids.study), key=lambda i: i.seq)
    assert [(i.seq, i.full, len(i.instances)) for i in runs] == [(1, False, 3), (2, True, 3)]  # all inferred again
    assert len(executions_for(stack, uids.study)) == 2


def test_reprocess_of_an_unknown_or_another_tenants_study_is_404(stack: Stack) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed",))
    beta = {"Authorization": "Bearer beta-key-0123456789abcdefghijk"}
    for headers, study in ((beta, uids.study), (stack.auth, "1.2.3.4.5.6.7.8.9")):
        response = httpx.post(f"{stack.url}/v1/studies/{study}/reprocess", headers=headers)
        assert response.status_code == 404, response.text
        assert "not found" in response.json()["detail"]
    assert httpx.post(f"{stack.url}/v1/studies/not-a-uid/reprocess", headers=stack.auth).status_code == 400
    assert httpx.post(f"{stack.url}/v1/studies/{uids.study}/reprocess").status_code == 401
    assert stack.status(uids.study)["runs"] == 1


def test_requests_while_a_run_is_in_flight_fold_into_one_follow_up(stack: Stack) -> None:
    """A modality sending one instance per request: the runs are far fewer than the requests, every
    instance is inferred once, and the results list them all."""
    uids, datasets = ct_study(12, rows=64)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda ds: send(stack, [ds]), datasets))
    deadline = time.monotonic() + 90
    while True:
        status = stack.wait_status(uids.study, ("completed", "failed"))
        assert status["status"] == "completed", status
        inferred = sorted(key for index in indexes(stack, uids.study) for key in index.instances)
        if len(inferred) == 12 and stack.status(uids.study)["status"] == "completed":
            break
        assert time.monotonic() < deadline, (status, inferred)
        time.sleep(0.3)
    assert len(set(inferred)) == 12  # each instance inferred once
    document = results(stack, uids.study)
    assert {i["sop_instance_uid"] for i in document["instances"]} == {ds.SOPInstanceUID for ds in datasets}  # type: ignore[attr-defined]
    runs = executions_for(stack, uids.study)
    assert len(runs) < 12
    assert all(r["status"] in ("SUCCEEDED", "RUNNING") for r in runs)


def test_a_lost_trigger_is_started_by_the_reconciler(stack: Stack, trigger_lost: None) -> None:
    uids, datasets = ct_study(2)
    send(stack, datasets)
    time.sleep(3)
    assert stack.status(uids.study)["status"] == "received"
    assert executions_for(stack, uids.study) == []  # nothing started it
    status = stack.wait_status(uids.study, ("completed", "failed"), timeout_s=60)  # the reconciler does
    assert status["status"] == "completed", status
    assert len(executions_for(stack, uids.study)) == 1
    assert any("reconciled" in line for line in (stack.logs / "scheduler.log").read_text().splitlines())


async def test_a_run_whose_execution_never_started_is_started(stack: Stack, trigger_lost: None) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    async with open_clients(stack.settings) as ctx:  # claimed, as StartPipeline does, but never started
        run = await ctx.status.claim_run("alpha", uids.study)
    assert run is not None
    status = await asyncio.to_thread(stack.wait_status, uids.study, ("completed", "failed"), 60)
    assert status["status"] == "completed" and status["run_id"] == run.run_id, status
    (execution,) = executions_for(stack, uids.study)
    assert execution["name"] == execution_name("alpha", uids.study, run.run_id)


async def test_a_run_whose_execution_ended_without_ending_it_is_closed(
    stack: Stack, trigger_lost: None, triton_paused: int
) -> None:
    """An execution that ends without MarkFailed (over the payload limit, or stopped): the reconciler ends
    the run as failed with a reason that says so, and a reprocess brings the study back. Triton is paused
    so that the execution is still running (in RunInference) when the test stops it."""
    uids, datasets = ct_study(1)
    send(stack, datasets)
    async with open_clients(stack.settings) as ctx:
        run = await ctx.status.claim_run("alpha", uids.study)
        assert run is not None
        name = execution_name("alpha", uids.study, run.run_id)
        await ctx.stepfunctions.start_execution(stack.settings.state_machine_name, name, run.document())
    sfn = stack.client("stepfunctions")
    (execution,) = executions_for(stack, uids.study)
    sfn.stop_execution(executionArn=execution["executionArn"], error="Test", cause="stopped by the test")
    os.kill(triton_paused, signal.SIGCONT)
    status = await asyncio.to_thread(stack.wait_status, uids.study, ("failed",), 60)
    assert "the run's execution ended ABORTED" in status["failure_reason"], status
    await asyncio.to_thread(reprocess_and_complete, stack, uids.study)


def reprocess_and_complete(stack: Stack, study: str) -> None:
    stack.client("events").enable_rule(Name=f"{stack.settings.state_machine_name}-manifests")
    response = httpx.post(f"{stack.url}/v1/studies/{study}/reprocess", headers=stack.auth)
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    while (status := stack.status(study))["status"] != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert wait_execution(stack, study) == "SUCCEEDED"
    assert results(stack, study)["run_id"] == status["run_id"]
