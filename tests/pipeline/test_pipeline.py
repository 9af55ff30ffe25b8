"""The pipeline end to end on the embedded stack: real moto (with its local gaps), Triton, gateway, worker."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import httpx
import pydicom
import pytest
from pydicom.uid import UltrasoundImageStorage

from infra.resources import ResourceNames
from loadtest import synthetic
from radstream import keys
from tests.gateway.stowhelp import stow
from tests.pipeline.conftest import Stack
from worker.stages.runs import execution_name


def ct_study(n: int = 2, rows: int = 128) -> tuple[synthetic.StudyUids, list[pydicom.Dataset]]:
    uids = synthetic.StudyUids.new()
    return uids, [synthetic.ct_slice(uids, i, rows=rows, cols=rows) for i in range(n)]


def send(stack: Stack, datasets: list[pydicom.Dataset]) -> None:
    response = stow(stack.url, stack.auth, [synthetic.to_bytes(ds) for ds in datasets])
    assert response.status_code == 200, response.text


def executions_for(stack: Stack, study: str, tenant: str = "alpha") -> list[dict[str, object]]:
    """The executions of the study's runs, oldest first (each is named after its study and run)."""
    prefix = execution_name(tenant, study, "00000000T000000-000000000000").split("-", 1)[0] + "-"
    return sorted((e for e in stack.executions() if str(e["name"]).startswith(prefix)), key=lambda e: e["startDate"])


def wait_execution(stack: Stack, study: str, timeout_s: float = 30) -> str:
    """Final status of the study's last run's execution (the study status turns first, the execution after)."""
    deadline = time.monotonic() + timeout_s
    while True:
        execution = executions_for(stack, study)[-1]
        if execution["status"] != "RUNNING" or time.monotonic() > deadline:
            return str(execution["status"])
        time.sleep(0.2)


def manifests_of(stack: Stack, study: str) -> list[str]:
    listing = stack.client("s3").list_objects_v2(
        Bucket=stack.settings.images_bucket, Prefix=f"manifests/alpha/{study}/"
    )
    return [o["Key"] for o in listing.get("Contents", [])]


def test_study_completes_with_json_sr_and_telemetry(stack: Stack) -> None:
    uids, datasets = ct_study(3)
    send(stack, datasets)
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed", status
    assert status["model"] == "lesion_detector"
    assert {"validate", "store"} <= set(status["stage_times_ms"])

    result = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth)
    assert result.status_code == 200
    document = result.json()
    assert {i["sop_instance_uid"] for i in document["instances"]} == {ds.SOPInstanceUID for ds in datasets}
    assert all(0.0 <= i["probability"] <= 1.0 for i in document["instances"])

    sr = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results/sr", headers=stack.auth)
    assert sr.status_code == 200
    assert sr.headers["content-type"] == "application/dicom"
    report = pydicom.dcmread(io.BytesIO(sr.content))
    assert report.Modality == "SR"
    assert report.StudyInstanceUID == uids.study
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in report.CurrentRequestedProcedureEvidenceSequence
        for s in series.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in datasets}

    deadline = time.monotonic() + 15
    while True:  # Firehose (the local pump) delivers about once a second
        stages = {r["stage"] for r in stack.telemetry() if r.get("study_uid") == uids.study}
        if {"stow", "validate", "prepare", "inference", "store", "end_to_end"} <= stages or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"stow", "validate", "prepare", "inference", "store", "end_to_end"} <= stages


def test_other_tenant_sees_no_results(stack: Stack) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed",))
    other = {"Authorization": "Bearer beta-key-0123456789abcdefghijk"}
    assert httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=other).status_code == 404
    assert httpx.get(f"{stack.url}/v1/studies/{uids.study}/results/sr", headers=other).status_code == 404


def test_study_without_a_model_ends_as_no_model(stack: Stack) -> None:
    uids, (ds,) = ct_study(1)
    ds.Modality = "US"
    ds.SOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    send(stack, [ds])
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed"
    result = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth).json()
    assert result["outcome"] == "no_model"
    assert result["detail"] == "no model for this input"
    sr = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results/sr", headers=stack.auth)
    assert sr.status_code == 404
    assert "no model" in sr.json()["detail"]


def test_one_manifest_starts_one_run_and_resend_starts_none(stack: Stack) -> None:
    uids, datasets = ct_study(2)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed",))
    (manifest_key,) = manifests_of(stack, uids.study)
    assert wait_execution(stack, uids.study) == "SUCCEEDED"
    time.sleep(1.1)  # the duplicate comes in a later second than the run began
    # the same S3 event delivered again (EventBridge is at-least-once): invoke the starter directly
    lam = stack.client("lambda")
    event = json.dumps({"bucket": stack.settings.images_bucket, "key": manifest_key}).encode()
    answer = json.loads(lam.invoke(FunctionName="radstream-start-pipeline", Payload=event)["Payload"].read())
    assert answer["started"] is False
    assert answer["covered_by"] == stack.status(uids.study)["run_id"]
    assert len(executions_for(stack, uids.study)) == 1

    send(stack, datasets)  # identical re-send of a completed study: stored already, no manifest, no run
    time.sleep(2)
    assert manifests_of(stack, uids.study) == [manifest_key]
    assert len(executions_for(stack, uids.study)) == 1
    outputs = stack.client("s3").list_objects_v2(
        Bucket=stack.settings.images_bucket, Prefix=keys.outputs_prefix("alpha", uids.study)
    )
    assert sorted(o["Key"].rsplit(".", 1)[1] for o in outputs["Contents"]) == ["json", "npz"]  # one run's


def test_failing_handler_retries_then_marks_failed(stack: Stack) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed",))
    # a manifest that names an instance the store does not have: PrepareTensors raises InstanceMissing,
    # a transient error, so Step Functions retries it, then Catch -> MarkFailed
    ghost = "1.2.826.0.1.3680043.10.99.1"
    request_id = "20260101T000000-ghost0000001"
    stack.write_manifest(
        uids.study, uids.series, request_id, sop=ghost, sop_class_uid=datasets[0].SOPClassUID, size=1, sha256="0" * 64
    )
    status = stack.wait_status(uids.study, ("failed",))
    assert status["failure_reason"].startswith("InstanceMissing: instance 1.2.826.0.1.3680043.10.99.1")
    assert wait_execution(stack, uids.study) == "FAILED"
    first, execution = executions_for(stack, uids.study)  # the study's first run, and the one the manifest started
    assert first["status"] == "SUCCEEDED"
    history = stack.client("stepfunctions").get_execution_history(executionArn=execution["executionArn"])["events"]
    attempts = [
        e
        for e in history
        if e["type"] == "TaskScheduled" and "prepare-tensors" in e["taskScheduledEventDetails"]["parameters"]
    ]
    assert len(attempts) == 9  # the first try and eight retries (their intervals scaled down in tests)
    deadline = time.monotonic() + 15
    while not any(
        r["stage"] == "failed" and r["study_uid"] == uids.study and r["reason"] == "InstanceMissing"
        for r in stack.telemetry()
    ):
        assert time.monotonic() < deadline, "no failure telemetry"
        time.sleep(0.5)


def _in_flight(stack: Stack) -> int:
    sqs = stack.client("sqs")
    url = sqs.get_queue_url(QueueName=stack.settings.inference_queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.slow
def test_worker_killed_while_holding_a_message_study_completes_once(stack: Stack, triton_paused: int) -> None:
    uids, datasets = ct_study(2)
    send(stack, datasets)
    deadline = time.monotonic() + 30
    while _in_flight(stack) == 0:  # the worker holds the message (Triton does not answer)
        assert time.monotonic() < deadline, "the worker never received the message"
        time.sleep(0.2)
    stack.kill("worker")
    os.kill(triton_paused, signal.SIGCONT)
    stack.start("worker")  # a fresh worker gets the message after its visibility timeout
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed", status
    assert wait_execution(stack, uids.study) == "SUCCEEDED"
    assert len(executions_for(stack, uids.study)) == 1
    result = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth).json()
    assert len(result["instances"]) == 2


@pytest.mark.slow
def test_triton_down_then_back_completes(stack: Stack, triton_paused: int) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    time.sleep(5)  # at least one attempt times out against the silent server
    assert stack.status(uids.study)["status"] == "processing"
    os.kill(triton_paused, signal.SIGCONT)
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed", status


def _dead_letters(stack: Stack) -> list[str]:
    """Bodies of the messages waiting in both dead-letter queues (read without hiding them)."""
    sqs = stack.client("sqs")
    names = ResourceNames.from_settings(stack.settings)
    bodies: list[str] = []
    for name in (names.inference_dlq, names.trigger_dlq):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        for _ in range(5):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0)
            bodies.extend(m["Body"] for m in got.get("Messages", []))
            if not got.get("Messages"):
                break
    return bodies


TRITON_OUTAGE_S = 150  # the figure: Triton stopped for 150 s while 20 studies wait


@pytest.mark.slow
def test_twenty_studies_wait_out_a_150_s_inference_outage(stack: Stack) -> None:
    """Triton stopped (SIGSTOP) for 150 s, fifty times the request deadline (3 s) and 25 times the message
    visibility timeout (6 s), with 20 studies waiting and the worker's outage budget at 200 s: every study
    completes in one run, none is failed, nothing reaches a dead-letter queue."""
    with stack.restarted("worker", RADSTREAM_WORKER_OUTAGE_BUDGET_S="200"):
        pid = stack.pid("triton")
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            studies = []
            for _ in range(20):
                uids, datasets = ct_study(1)
                send(stack, datasets)
                studies.append(uids.study)
            time.sleep(max(0.0, TRITON_OUTAGE_S - (time.monotonic() - started)))
            assert {stack.status(study)["status"] for study in studies} <= {"received", "processing"}
        finally:
            os.kill(pid, signal.SIGCONT)
        final = [stack.wait_status(study, ("completed", "failed"), timeout_s=180) for study in studies]
    assert [s["status"] for s in final] == ["completed"] * 20, [s for s in final if s["status"] != "completed"]
    assert all(s["runs"] == 1 and s["failure_reason"] is None for s in final), final
    letters = _dead_letters(stack)
    assert not [body for body in letters for study in studies if study in body], letters


@pytest.mark.slow
def test_triton_down_too_long_fails_with_reason_and_a_resend_completes_it(stack: Stack, triton_paused: int) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "failed"
    assert status["failure_reason"].startswith("InferenceUnavailable: the inference server was unavailable for 1")
    assert "past the outage budget of 12 s" in status["failure_reason"]
    # the server is back; the sender sends the study again (identical bytes, nothing new to store): a new run
    os.kill(triton_paused, signal.SIGCONT)
    send(stack, datasets)
    status = stack.wait_status(uids.study, ("completed",))
    assert status["runs"] == 2 and status["failure_reason"] is None
    assert len(manifests_of(stack, uids.study)) == 2  # the study's, and the retry's (it lists nothing)


def test_no_phi_in_telemetry_or_logs(stack: Stack) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    stack.wait_status(uids.study, ("completed", "failed"))
    time.sleep(1.5)  # one more Firehose delivery
    records = stack.telemetry()
    assert records
    phi = (synthetic.FAKE_PATIENT_NAME, synthetic.FAKE_PATIENT_ID, synthetic.FAKE_BIRTH_DATE, "Synthetic^Phantom")
    text = json.dumps(records)
    for value in phi:
        assert value not in text
    logs = list(stack.logs.glob("*.log"))
    assert {p.name for p in logs} >= {
        "aws-emulator.log",
        "lambda-runtime.log",
        "gateway.log",
        "worker.log",
        "triton.log",
    }
    for path in logs:
        content = path.read_text(errors="replace")
        for value in phi:
            assert value not in content, f"{value!r} found in {path.name}"


def test_sigterm_lets_the_worker_finish_what_it_holds(stack: Stack, triton_paused: int) -> None:
    uids, datasets = ct_study(1)
    send(stack, datasets)
    deadline = time.monotonic() + 30
    while _in_flight(stack) == 0:
        assert time.monotonic() < deadline, "the worker never received the message"
        time.sleep(0.2)
    supervisor = stack.supervisors.pop("worker")
    _, proc = supervisor.children[0]
    proc.send_signal(signal.SIGTERM)  # stop taking messages, finish the one held
    os.kill(triton_paused, signal.SIGCONT)
    assert proc.wait(timeout=60) == 0
    supervisor.children.clear()
    try:
        status = stack.status(uids.study)
        assert status["status"] == "completed", status  # finished by the stopping worker, no one else
    finally:
        stack.start("worker")


def test_unparseable_message_goes_to_the_dead_letter_queue(stack: Stack) -> None:
    sqs = stack.client("sqs")
    queue = sqs.get_queue_url(QueueName=stack.settings.inference_queue)["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=f"{stack.settings.inference_queue}-dlq")["QueueUrl"]
    marker = f"poison-{time.time_ns()}"
    sqs.send_message(QueueUrl=queue, MessageBody=marker)
    deadline = time.monotonic() + 60
    while True:
        got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if any(m["Body"] == marker for m in got):
            break
        assert time.monotonic() < deadline, "poison message never reached the DLQ"


def test_instances_without_results_are_listed_with_the_reason(stack: Stack) -> None:
    uids, datasets = ct_study(3)
    broken = datasets[2]
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]  # header fine, pixels truncated
    ultrasound = synthetic.ct_slice(uids, 3, rows=64, cols=64)
    ultrasound.Modality = "US"
    ultrasound.SOPClassUID = UltrasoundImageStorage
    ultrasound.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    send(stack, [*datasets, ultrasound])
    status = stack.wait_status(uids.study, ("completed", "failed"))
    assert status["status"] == "completed", status
    document = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth).json()
    assert {i["sop_instance_uid"] for i in document["instances"]} == {d.SOPInstanceUID for d in datasets[:2]}
    reasons = {item["sop_instance_uid"]: item["reason"] for item in document["not_analysed"]}
    assert reasons[broken.SOPInstanceUID].startswith("could not be decoded")
    assert reasons[ultrasound.SOPInstanceUID].startswith("no model for this input (modality US")
