"""Patient values never leave the data set: a sentinel written into every text attribute of a study, with
pixel data that cannot be decoded in some of its instances, appears in no log, execution history, queue
message, status, telemetry record or JSON result. (The SR and SEG objects carry the patient module, as
DICOM requires; they are not searched.)"""

from __future__ import annotations

import json
import time

import httpx
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.resources import ResourceNames
from loadtest import synthetic
from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import executions_for, send

TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT"}
EXTRA_TEXT = (  # attributes a real study carries that the synthetic slice leaves out
    "InstitutionName",
    "StudyDescription",
    "SeriesDescription",
    "ReferringPhysicianName",
    "AccessionNumber",
    "PatientComments",
    "ImageComments",
    "OperatorsName",
    "ProtocolName",
)
CORRUPTIONS = ("none", "truncated", "odd_length", "photometric")


def _with_sentinel(ds: pydicom.Dataset, sentinel: str, corruption: str) -> pydicom.Dataset:
    for keyword in EXTRA_TEXT:
        setattr(ds, keyword, sentinel)
    for elem in ds.iterall():
        if elem.VR in TEXT_VRS:
            elem.value = sentinel
    if corruption == "truncated":
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    elif corruption == "odd_length":
        ds.PixelData = ds.PixelData + sentinel.encode()[:1]
    elif corruption == "photometric":  # a library that names the value it cannot handle would quote it
        ds.PhotometricInterpretation = sentinel
    return ds


def _queue_bodies(stack: Stack) -> str:
    sqs = stack.client("sqs")
    names = ResourceNames.from_settings(stack.settings)
    bodies = []
    for name in (names.inference_queue, names.inference_dlq, names.trigger_dlq):
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0)
        bodies.extend(m["Body"] for m in got.get("Messages", []))
    return "\n".join(bodies)


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.text(alphabet="ABCDEFGHJKLMNPRSTUVWXY0123456789", min_size=8, max_size=12),
    corruptions=st.lists(st.sampled_from(CORRUPTIONS), min_size=2, max_size=3),
)
def test_a_sentinel_in_every_text_attribute_is_nowhere_outside_the_data_set(
    stack: Stack, suffix: str, corruptions: list[str]
) -> None:
    sentinel = "ZQ" + suffix  # 10 to 14 characters: fits every text VR, CS included
    uids = synthetic.StudyUids.new()
    datasets = [
        _with_sentinel(synthetic.ct_slice(uids, i, rows=64, cols=64), sentinel, corruption)
        for i, corruption in enumerate(corruptions)
    ]
    send(stack, datasets)
    status = stack.wait_status(uids.study, ("completed", "failed"))
    if "none" in corruptions:  # one intact instance is enough for a result; the others are recorded as failed
        assert status["status"] == "completed", status
    time.sleep(1.5)  # one more telemetry delivery
    seen = {
        "status": json.dumps(status),
        "results": httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth, timeout=30).text,
        "telemetry": json.dumps(stack.telemetry()),
        "queues": _queue_bodies(stack),
    }
    sfn = stack.client("stepfunctions")
    executions = executions_for(stack, uids.study)
    assert executions
    for execution in executions:
        history = sfn.get_execution_history(executionArn=execution["executionArn"], maxResults=1000)
        seen[f"history {execution['name']}"] = json.dumps(history["events"], default=str)
    for path in stack.logs.glob("*.log"):
        seen[path.name] = path.read_text(errors="replace")
    assert {"worker.log", "gateway.log", "lambda-runtime.log"} <= set(seen)
    assert sentinel in synthetic.to_bytes(datasets[0]).decode("latin-1")  # the sentinel is really in the data
    leaks = [where for where, text in seen.items() if sentinel in text]
    assert not leaks, (sentinel, corruptions, leaks)
