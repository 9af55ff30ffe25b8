"""Studies far larger than a state's payload may be: the state carries identifiers and counts, never lists
that grow with the study, so they complete; the local stack fails an execution whose state passes
256 KB as AWS does (tests/stack/test_local_gaps.py), so a regression would fail here."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pydicom
import pytest

from loadtest import synthetic
from radstream import keys
from radstream.manifest import Manifest, ManifestInstance
from radstream.status import utcnow
from tests.gateway import stowhelp
from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import executions_for, wait_execution


def long_uid(i: int) -> str:
    """A 64-character UID, the longest DICOM allows."""
    stem = f"1.2.826.0.1.3680043.10.1137.{i}."
    return stem + "9" * (64 - len(stem))


def small_slice(uids: synthetic.StudyUids, i: int, sop: str | None = None) -> bytes:
    ds = synthetic.ct_slice(uids, i, rows=16, cols=16)
    if sop is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    return synthetic.to_bytes(ds)


def wait_completed(stack: Stack, study: str, timeout_s: float) -> dict[str, object]:
    status = stack.wait_status(study, ("completed", "failed"), timeout_s=timeout_s)
    assert status["status"] == "completed", status
    assert wait_execution(stack, study, timeout_s=30) == "SUCCEEDED"
    return status


@pytest.mark.slow
def test_3000_instances_with_64_character_uids_complete(stack: Stack) -> None:
    """About 600 KB of UIDs alone: the size at which the old state's list of prepared instances passed 256 KB.
    Written straight to the store with the manifest a request would have written (the gateway is not what
    this checks; the next test sends through it)."""
    study = long_uid(0)
    series = long_uid(1)
    uids = synthetic.StudyUids(study=study, series=series)
    s3, bucket = stack.client("s3"), stack.settings.images_bucket

    def put(i: int) -> ManifestInstance:
        sop = long_uid(10_000 + i)
        data = small_slice(uids, i, sop)
        key = keys.instance_key("alpha", study, series, sop)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        return ManifestInstance(
            key=key,
            sop_class_uid=pydicom.uid.CTImageStorage,
            sop_instance_uid=sop,
            series_instance_uid=series,
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
            modality="CT",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    with ThreadPoolExecutor(8) as pool:
        instances = list(pool.map(put, range(3000)))
    request_id = keys.new_request_id()
    manifest = Manifest(
        request_id=request_id, tenant="alpha", study_instance_uid=study, received_at=utcnow(), instances=instances
    )
    assert len(manifest.model_dump_json()) > 4 * 256 * 1024
    s3.put_object(
        Bucket=bucket, Key=keys.manifest_key("alpha", study, request_id), Body=manifest.model_dump_json().encode()
    )
    wait_completed(stack, study, timeout_s=600)
    document = httpx.get(f"{stack.url}/v1/studies/{study}/results", headers=stack.auth, timeout=60).json()
    assert len(document["instances"]) == 3000
    (execution,) = executions_for(stack, study)
    history = stack.client("stepfunctions").get_execution_history(
        executionArn=execution["executionArn"], maxResults=1000
    )
    largest = max(len(str(e)) for e in history["events"])
    assert largest < 64 * 1024  # every state's input and output stays small


@pytest.mark.slow
def test_gateway_killed_during_a_500_instance_upload_then_resent_completes_once(stack: Stack) -> None:
    """SIGKILL to the gateway mid-request (a crashed node): the sender sees the request fail, nothing was
    acknowledged, and a re-send of the whole study stores 500 objects, processes 500 and builds one result."""
    uids = synthetic.StudyUids.new()
    parts = [small_slice(uids, i) for i in range(500)]
    boundary = stowhelp.BOUNDARY
    sent_half = threading.Event()

    def body() -> Iterator[bytes]:
        for i, part in enumerate(parts):
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            if i == 250:
                sent_half.set()
                time.sleep(5)  # the gateway dies here, half the study in its hands
        yield f"--{boundary}--\r\n".encode()

    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(
                httpx.post(
                    f"{stack.url}/dicomweb/studies",
                    content=body(),
                    headers={**stack.auth, "Content-Type": stowhelp.CONTENT_TYPE},
                    timeout=60,
                )
            )
        except httpx.HTTPError as exc:
            outcome.append(exc)

    sender = threading.Thread(target=upload)
    sender.start()
    try:
        assert sent_half.wait(60)
        time.sleep(0.5)
        stack.kill("gateway")
    finally:
        sender.join(60)
        if "gateway" not in stack.supervisors:
            stack.start("gateway")
    assert len(outcome) == 1 and not isinstance(outcome[0], httpx.Response), outcome  # nothing acknowledged
    response = stowhelp.stow(stack.url, stack.auth, parts)
    assert response.status_code == 200, response.text
    status = wait_completed(stack, uids.study, timeout_s=240)
    assert status["runs"] == 1, status
    s3 = stack.client("s3")
    listed = s3.get_paginator("list_objects_v2").paginate(
        Bucket=stack.settings.images_bucket, Prefix=f"instances/alpha/{uids.study}/"
    )
    assert sum(len(page.get("Contents", [])) for page in listed) == 500
    document = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth, timeout=60).json()
    assert len(document["instances"]) == 500
    assert len({i["sop_instance_uid"] for i in document["instances"]}) == 500


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_10000_instances_in_one_request_complete(stack: Stack) -> None:
    """The most parts the gateway accepts in one request, through the gateway: every instance stored,
    inferred and in the one result."""
    uids = synthetic.StudyUids.new()
    parts = [small_slice(uids, i) for i in range(10_000)]
    response = stowhelp.stow(stack.url, stack.auth, parts, timeout=600)
    assert response.status_code == 200, response.text[:500]
    assert len(stowhelp.referenced(response.json())) == 10_000
    status = wait_completed(stack, uids.study, timeout_s=780)
    assert status["runs"] == 1, status
    document = httpx.get(f"{stack.url}/v1/studies/{uids.study}/results", headers=stack.auth, timeout=120).json()
    assert len({i["sop_instance_uid"] for i in document["instances"]}) == 10_000
