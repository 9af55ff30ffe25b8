"""STOW-RS against the real gateway process and a real moto server, over loopback sockets."""

from __future__ import annotations

import io
import json

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from loadtest import synthetic
from radstream.errors import FailureReason
from radstream.keys import instance_key
from tests.conftest import KEY_BETA, Emulator, Gateway
from tests.gateway.stowhelp import BOUNDARY, failed, multipart, reasons, referenced, stow


def client(gateway: Gateway, *, chunk_size: int = 10**6, key: str | None = None) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{gateway.url}/dicomweb", headers=gateway.auth(*(k for k in [key] if k)), chunk_size=chunk_size
    )


def series(n: int, rows: int = 64) -> tuple[synthetic.StudyUids, list[pydicom.Dataset]]:
    uids = synthetic.StudyUids.new()
    return uids, [synthetic.ct_slice(uids, i, rows=rows, cols=rows) for i in range(n)]


def versions(emulator: Emulator, bucket: str, key: str) -> int:
    listing = emulator.client("s3").list_object_versions(Bucket=bucket, Prefix=key)
    return len(listing.get("Versions", []))


def test_dicomweb_client_stores_one_instance(gateway: Gateway) -> None:
    uids, (ds,) = series(1)
    result = client(gateway).store_instances([ds])
    (item,) = result.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert item.RetrieveURL.endswith(f"/studies/{uids.study}/series/{uids.series}/instances/{ds.SOPInstanceUID}")
    assert "FailedSOPSequence" not in result
    assert result.RetrieveURL == f"{gateway.url}/dicomweb/studies/{uids.study}"


def test_dicomweb_client_stores_many_with_chunked_body(gateway: Gateway, emulator: Emulator) -> None:
    uids, datasets = series(12, rows=128)
    # chunk_size below the body size makes dicomweb-client send Transfer-Encoding: chunked
    result = client(gateway, chunk_size=8192).store_instances(datasets, study_instance_uid=uids.study)
    stored = {item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in datasets}
    s3 = emulator.client("s3")
    for ds in datasets:
        key = instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
        head = s3.head_object(Bucket=gateway.settings.images_bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert len(head["Metadata"]["sha256"]) == 64


def test_dicomweb_client_retrieves_what_it_stored(gateway: Gateway) -> None:
    uids, datasets = series(2)
    web = client(gateway)
    web.store_instances(datasets)
    got = web.retrieve_instance(uids.study, uids.series, datasets[1].SOPInstanceUID)
    assert got.SOPInstanceUID == datasets[1].SOPInstanceUID
    assert got.PixelData == datasets[1].PixelData


def test_the_study_retrieve_url_of_a_stow_response_returns_every_stored_instance(gateway: Gateway) -> None:
    """Two requests, the second re-sending one instance: the study's RetrieveURL (0008,1190) resolves to a
    WADO-RS Retrieve Study that a real client reads, with each instance once and byte for byte as sent."""
    uids, datasets = series(3)
    sent = {ds.SOPInstanceUID: synthetic.to_bytes(ds) for ds in datasets}
    assert stow(gateway.url, gateway.auth(), list(sent.values())[:2]).status_code == 200
    response = stow(gateway.url, gateway.auth(), list(sent.values())[1:])
    assert response.status_code == 200
    study_url = response.json()["00081190"]["Value"][0]
    assert study_url == f"{gateway.url}/dicomweb/studies/{uids.study}"

    got = client(gateway).retrieve_study(uids.study)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(sent)
    raw = httpx.get(study_url, headers=gateway.auth())
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("multipart/related")
    assert all(raw.content.count(data) == 1 for data in sent.values())

    single = httpx.get(study_url, headers={**gateway.auth(), "Accept": "application/dicom"})
    assert single.status_code == 406
    assert httpx.get(study_url, headers=gateway.auth(KEY_BETA)).status_code == 404
    assert httpx.get(f"{gateway.url}/dicomweb/studies/1.2.3.999", headers=gateway.auth()).status_code == 404


def test_parts_without_headers_and_long_boundary(gateway: Gateway) -> None:
    uids, datasets = series(2)
    boundary = "O" * 73  # Orthanc's boundary length; dcm4che and others send up to 100
    body = b"".join(f"--{boundary}\r\n\r\n".encode() + synthetic.to_bytes(ds) + b"\r\n" for ds in datasets)
    body += f"--{boundary}--".encode()
    response = httpx.post(
        f"{gateway.url}/dicomweb/studies",
        content=body,
        headers={**gateway.auth(), "Content-Type": f"multipart/related; boundary={boundary}; type=application/dicom"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    assert len(referenced(response.json())) == 2


def test_partial_failure_is_202_with_reasons(gateway: Gateway) -> None:
    uids, (good,) = series(1)
    other_uids, (foreign,) = series(1)
    parts = [synthetic.to_bytes(good), b"this is not DICOM", synthetic.to_bytes(foreign)]
    response = stow(gateway.url, gateway.auth(), parts, study=uids.study)
    assert response.status_code == 202
    body = response.json()
    assert [item["00081155"]["Value"][0] for item in referenced(body)] == [good.SOPInstanceUID]
    assert reasons(body) == [FailureReason.CANNOT_UNDERSTAND, FailureReason.STUDY_UID_MISMATCH]
    mismatch = failed(body)[1]
    assert mismatch["00081155"]["Value"][0] == foreign.SOPInstanceUID
    assert "does not match" in mismatch["00000902"]["Value"][0]


def test_all_mismatched_is_409(gateway: Gateway) -> None:
    _, (ds,) = series(1)
    response = stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)], study="1.2.3.4")
    assert response.status_code == 409
    assert reasons(response.json()) == [FailureReason.STUDY_UID_MISMATCH]


def test_unsupported_transfer_syntax_is_c122(gateway: Gateway) -> None:
    _, (ds,) = series(1)
    data = synthetic.to_bytes(ds).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.1\x00", 1)
    response = stow(gateway.url, gateway.auth(), [data])
    assert response.status_code == 409
    assert reasons(response.json()) == [FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED]


def test_missing_attribute_and_wrong_part_type(gateway: Gateway) -> None:
    _, (ds,) = series(1)
    del ds.SeriesInstanceUID
    response = stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)])
    assert response.status_code == 400
    (item,) = failed(response.json())
    assert item["00081197"]["Value"] == [FailureReason.MISSING_ATTRIBUTE]
    assert item["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert "SeriesInstanceUID" in item["00000902"]["Value"][0]

    data = multipart([b"{}"], part_type="application/json")
    response = httpx.post(
        f"{gateway.url}/dicomweb/studies",
        content=data,
        headers={**gateway.auth(), "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
    )
    assert response.status_code == 400
    assert reasons(response.json()) == [FailureReason.NOT_APPLICATION_DICOM]


def test_sop_class_mismatch_is_stored_with_warning(gateway: Gateway) -> None:
    _, (ds,) = series(1)
    # File Meta says Secondary Capture while the data set says CT (same UID length: patch the first one)
    data = synthetic.to_bytes(ds).replace(b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.840.10008.5.1.4.1.1.7\x00", 1)
    response = stow(gateway.url, gateway.auth(), [data])
    assert response.status_code == 202
    (item,) = referenced(response.json())
    assert item["00081196"]["Value"] == [0xB007]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"", f"multipart/related; type=application/dicom; boundary={BOUNDARY}", 400, "no parts"),
        (b"just text, no boundary", f"multipart/related; type=application/dicom; boundary={BOUNDARY}", 400, "no parts"),
        (b"--x--", "multipart/related; type=application/dicom", 400, "boundary"),
        (b"{}", "application/json", 415, "not supported"),
        (b"--x--", "multipart/related; type=application/dicom+xml; boundary=x", 415, "application/dicom+xml"),
    ],
)
def test_request_level_errors(gateway: Gateway, body: bytes, content_type: str, status: int, needle: str) -> None:
    response = httpx.post(
        f"{gateway.url}/dicomweb/studies", content=body, headers={**gateway.auth(), "Content-Type": content_type}
    )
    assert response.status_code == status
    assert needle in response.json()["detail"]


def test_truncated_last_part_fails_alone(gateway: Gateway) -> None:
    _, datasets = series(2)
    data = multipart([synthetic.to_bytes(ds) for ds in datasets])
    assert_one_stored_and_the_rest_truncated(gateway, data[: len(data) - 200])


def assert_one_stored_and_the_rest_truncated(gateway: Gateway, cut: bytes) -> None:
    response = httpx.post(
        f"{gateway.url}/dicomweb/studies", content=cut, headers={**gateway.auth(), "Content-Type": stow_ct()}
    )
    assert response.status_code == 202
    body = response.json()
    assert len(referenced(body)) == 1
    assert reasons(body) == [FailureReason.TRUNCATED_PART]


@pytest.mark.parametrize(
    "tail",
    [b"\r\n--" + BOUNDARY.encode() + b"\r\nContent-Type: applic", b"\r\n--" + BOUNDARY.encode() + b"\r\n"],
    ids=["inside-the-next-part-s-headers", "right-after-a-boundary"],
)
def test_a_body_cut_after_a_complete_part_is_not_all_stored(gateway: Gateway, tail: bytes) -> None:
    """The first part is whole; the body then ends where a further part or the closing boundary should be.
    That is not "all stored" (200): the missing remainder is reported as a truncated part (202)."""
    _, (ds,) = series(1)
    whole = multipart([synthetic.to_bytes(ds)])
    assert_one_stored_and_the_rest_truncated(gateway, whole[: whole.rindex(b"\r\n--" + BOUNDARY.encode())] + tail)


def test_a_malformed_attribute_fails_its_part_alone(gateway: Gateway) -> None:
    """Modality (0008,0060) re-encoded with VR FD and 3 bytes: pydicom fails on reading the value, and
    that part alone is 0xC000, while the other part of the request is stored."""
    _, (good, bad) = series(2)
    raw = synthetic.to_bytes(bad)
    element = b"\x08\x00\x60\x00CS\x02\x00CT"
    assert raw.count(element) == 1
    broken = raw.replace(element, b"\x08\x00\x60\x00FD\x03\x00CT\x00")
    response = stow(gateway.url, gateway.auth(), [synthetic.to_bytes(good), broken])
    assert response.status_code == 202
    body = response.json()
    assert len(referenced(body)) == 1
    assert reasons(body) == [FailureReason.CANNOT_UNDERSTAND]


def stow_ct() -> str:
    return f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def test_auth_required(gateway: Gateway) -> None:
    _, (ds,) = series(1)
    data = multipart([synthetic.to_bytes(ds)])
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic YTpi"}):
        response = httpx.post(
            f"{gateway.url}/dicomweb/studies", content=data, headers={**headers, "Content-Type": stow_ct()}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{gateway.url}/v1/studies/{ds.StudyInstanceUID}").status_code == 401


def test_resend_identical_is_success_without_second_copy(gateway: Gateway, emulator: Emulator) -> None:
    uids, datasets = series(3)
    parts = [synthetic.to_bytes(ds) for ds in datasets]
    first = stow(gateway.url, gateway.auth(), parts)
    again = stow(gateway.url, gateway.auth(), parts)
    assert first.status_code == again.status_code == 200
    assert len(referenced(again.json())) == 3
    for ds in datasets:
        key = instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
        assert versions(emulator, gateway.settings.images_bucket, key) == 1
    manifests = emulator.client("s3").list_objects_v2(
        Bucket=gateway.settings.images_bucket, Prefix=f"manifests/alpha/{uids.study}/"
    )
    assert manifests["KeyCount"] == 1  # the re-send created nothing new, so it starts nothing
    status = httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth()).json()
    assert status["instances"] == 3


def test_resend_with_different_bytes_fails_and_keeps_the_original(gateway: Gateway, emulator: Emulator) -> None:
    uids, (ds,) = series(1)
    original = synthetic.to_bytes(ds)
    assert stow(gateway.url, gateway.auth(), [original]).status_code == 200
    ds.SeriesDescription = "changed"
    response = stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)])
    assert response.status_code == 409
    (item,) = failed(response.json())
    assert item["00081197"]["Value"] == [FailureReason.DUPLICATE_SOP_INSTANCE]
    key = instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
    stored = emulator.client("s3").get_object(Bucket=gateway.settings.images_bucket, Key=key)["Body"].read()
    assert stored == original
    assert versions(emulator, gateway.settings.images_bucket, key) == 1


def test_manifest_lists_what_the_request_stored(gateway: Gateway, emulator: Emulator) -> None:
    uids, datasets = series(4)
    stow(gateway.url, gateway.auth(), [synthetic.to_bytes(datasets[0])])
    stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds) for ds in datasets])  # 1 re-sent, 3 new
    s3 = emulator.client("s3")
    listing = s3.list_objects_v2(Bucket=gateway.settings.images_bucket, Prefix=f"manifests/alpha/{uids.study}/")
    manifests = [
        json.loads(s3.get_object(Bucket=gateway.settings.images_bucket, Key=o["Key"])["Body"].read())
        for o in listing["Contents"]
    ]
    counts = sorted(len(m["instances"]) for m in manifests)
    assert counts == [1, 3]
    assert all(m["tenant"] == "alpha" and m["study_instance_uid"] == uids.study for m in manifests)
    assert "PatientName" not in json.dumps(manifests)
    assert synthetic.FAKE_PATIENT_ID not in json.dumps(manifests)


def test_study_status_counts(gateway: Gateway) -> None:
    uids = synthetic.StudyUids.new()
    second = synthetic.StudyUids(study=uids.study, series=synthetic.StudyUids.new().series)
    parts = [synthetic.to_bytes(synthetic.ct_slice(u, i, rows=32, cols=32)) for u in (uids, second) for i in range(2)]
    assert stow(gateway.url, gateway.auth(), parts).status_code == 200
    status = httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth())
    assert status.status_code == 200
    body = status.json()
    assert body["status"] == "received"
    assert (body["instances"], body["series"]) == (4, 2)
    assert body["created_at"] <= body["updated_at"]
    missing = httpx.get(f"{gateway.url}/v1/studies/1.2.3.999", headers=gateway.auth())
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


def test_tenants_are_isolated(gateway: Gateway) -> None:
    uids, (ds,) = series(1)
    assert stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)]).status_code == 200
    path = f"/dicomweb/studies/{uids.study}/series/{uids.series}/instances/{ds.SOPInstanceUID}"
    assert httpx.get(gateway.url + path, headers=gateway.auth()).status_code == 200
    assert httpx.get(gateway.url + path, headers=gateway.auth(KEY_BETA)).status_code == 404
    assert httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth(KEY_BETA)).status_code == 404
    # beta storing the same instance gets its own copy, and alpha's stays untouched
    assert stow(gateway.url, gateway.auth(KEY_BETA), [synthetic.to_bytes(ds)]).status_code == 200


def test_wado_media_types(gateway: Gateway) -> None:
    uids, (ds,) = series(1)
    data = synthetic.to_bytes(ds)
    stow(gateway.url, gateway.auth(), [data])
    url = f"{gateway.url}/dicomweb/studies/{uids.study}/series/{uids.series}/instances/{ds.SOPInstanceUID}"
    single = httpx.get(url, headers={**gateway.auth(), "Accept": "application/dicom"})
    assert single.status_code == 200
    assert single.headers["content-type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    assert single.content == data
    multi = httpx.get(url, headers=gateway.auth())
    assert multi.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert data in multi.content
    assert (
        f"Content-Type: application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}".encode() in multi.content
    )
    assert pydicom.dcmread(io.BytesIO(single.content)).SOPInstanceUID == ds.SOPInstanceUID
    assert httpx.get(url, headers={**gateway.auth(), "Accept": "image/png"}).status_code == 406
    stored_syntax = {**gateway.auth(), "Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}
    named = httpx.get(url, headers=stored_syntax)
    assert named.status_code == 200 and named.content == data
    assert named.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    jpeg = {**gateway.auth(), "Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"}
    assert httpx.get(url, headers=jpeg).status_code == 406  # returned as stored, never transcoded
    assert httpx.get(url.replace(ds.SOPInstanceUID, "1.2.3"), headers=gateway.auth()).status_code == 404
    assert httpx.get(url.replace(ds.SOPInstanceUID, "not-a-uid"), headers=gateway.auth()).status_code == 400


def test_health_and_metrics(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").json() == {"status": "ready"}
    _, (ds,) = series(1)
    stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds), b"garbage"])
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'radstream_instance_failures_total{reason="0xC000"}' in text
    assert "radstream_instances_stored_total" in text
    assert "radstream_stored_bytes_total" in text
    histogram = [line for line in text.splitlines() if line.startswith("radstream_http_request_duration_seconds_count")]
    assert any('route="/dicomweb/studies"' in line and 'method="POST"' in line for line in histogram)
