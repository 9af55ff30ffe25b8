"""The read side of the gateway: status counts, invalid parameters, errors that name no storage internals,
storage that refuses for good, and readiness. Against real gateway processes and the real emulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest

from infra.local.emulator.process import http_ok
from infra.local.stack import child_env, gateway_process_spec
from infra.local.supervisor import Supervisor
from loadtest import synthetic
from radstream.keys import instance_key
from radstream.settings import Settings
from tests.conftest import API_KEYS, Emulator, Gateway, free_port, start_gateway
from tests.gateway.stowhelp import stow


def test_status_counts_what_the_manifests_list_not_objects_left_behind(gateway: Gateway, emulator: Emulator) -> None:
    uids = synthetic.StudyUids.new()
    other_series = synthetic.StudyUids(study=uids.study, series=synthetic.StudyUids.new().series)
    parts = [synthetic.to_bytes(synthetic.ct_slice(u, i, rows=32, cols=32)) for i, u in enumerate([uids, other_series])]
    assert stow(gateway.url, gateway.auth(), parts).status_code == 200
    # What a request that failed (413 part-way, 503 on its manifest) leaves: an object that no manifest lists
    # and whose client was told nothing was stored.
    left = synthetic.ct_slice(synthetic.StudyUids(study=uids.study, series=synthetic.StudyUids.new().series), 9)
    key = instance_key("alpha", uids.study, left.SeriesInstanceUID, left.SOPInstanceUID)
    emulator.client("s3").put_object(Bucket=gateway.settings.images_bucket, Key=key, Body=synthetic.to_bytes(left))

    status = httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth()).json()
    assert (status["instances"], status["series"]) == (2, 2)
    retrieved = httpx.get(f"{gateway.url}/dicomweb/studies/{uids.study}", headers=gateway.auth())
    assert retrieved.content.count(b"Content-Type: application/dicom") == 2  # the same two


@pytest.mark.parametrize(
    "path",
    [
        "/v1/studies/not-a-uid",
        "/v1/studies/1..2/results",
        "/dicomweb/studies/abc",
        "/dicomweb/studies/1.2/series/1.2.3./instances/1.2.3",
    ],
)
def test_an_invalid_uid_in_the_path_is_400(gateway: Gateway, path: str) -> None:
    response = httpx.get(f"{gateway.url}{path}", headers=gateway.auth())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"


def test_a_missing_instance_is_404_without_storage_names(gateway: Gateway) -> None:
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=32, cols=32)
    assert stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)]).status_code == 200
    missing = f"{gateway.url}/dicomweb/studies/{uids.study}/series/{uids.series}/instances/1.2.3.4"
    response = httpx.get(missing, headers=gateway.auth())
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "1.2.3.4" in detail and "instances/" not in detail and "alpha" not in detail


def start_unready_gateway(settings: Settings) -> Gateway:
    """A gateway waited for until it is alive (/healthz), not ready: its /readyz is what the test reads."""
    supervisor = Supervisor()
    spec = gateway_process_spec(settings, child_env(settings, API_KEYS))
    alive = f"http://127.0.0.1:{settings.http_port}/healthz"
    try:
        proc = supervisor.start(dataclasses.replace(spec, ready=lambda: http_ok(alive)))
    except BaseException:
        supervisor.stop()
        raise
    return Gateway(f"http://127.0.0.1:{settings.http_port}", proc.pid, settings, supervisor)


@pytest.fixture(scope="module")
def misconfigured(settings: Settings) -> Iterator[tuple[Gateway, Gateway]]:
    """One gateway whose results bucket does not exist, one whose status table does not."""
    no_results = start_gateway(replace_settings(settings, results_bucket="radstream-no-such-results"))
    try:
        no_table = start_unready_gateway(replace_settings(settings, status_table="radstream-no-such-table"))
        try:
            yield no_results, no_table
        finally:
            no_table.supervisor.stop()
    finally:
        no_results.supervisor.stop()


def replace_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"http_port": free_port(), **changes})


def test_storage_that_refuses_for_good_is_a_json_500_naming_no_bucket(misconfigured: tuple[Gateway, Gateway]) -> None:
    gateway, _ = misconfigured
    uids = synthetic.StudyUids.new()
    assert stow(gateway.url, gateway.auth(), [synthetic.to_bytes(synthetic.ct_slice(uids, 0))]).status_code == 200
    response = httpx.get(f"{gateway.url}/v1/studies/{uids.study}/results", headers=gateway.auth())
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "storage_error" and "NoSuchBucket" in body["detail"]
    assert "radstream-no-such-results" not in response.text
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200  # STOW-RS works without the results bucket


def test_not_ready_without_the_status_table(misconfigured: tuple[Gateway, Gateway]) -> None:
    _, gateway = misconfigured
    response = httpx.get(f"{gateway.url}/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "the status table is not reachable"
    assert int(response.headers["retry-after"]) > 0


def test_an_instance_stored_without_its_syntax_in_metadata_is_labelled_from_its_file_meta(
    gateway: Gateway, emulator: Emulator
) -> None:
    """Objects written before STOW-RS recorded the transfer syntax in their metadata."""
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=32, cols=32)
    data = synthetic.to_bytes(ds)
    key = instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
    emulator.client("s3").put_object(Bucket=gateway.settings.images_bucket, Key=key, Body=data)
    url = f"{gateway.url}/dicomweb/studies/{uids.study}/series/{uids.series}/instances/{ds.SOPInstanceUID}"
    got = httpx.get(url, headers={**gateway.auth(), "Accept": "application/dicom"})
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
    refused = httpx.get(url, headers={**gateway.auth(), "Accept": "application/dicom; transfer-syntax=1.2.3"})
    assert refused.status_code == 406


def test_head_answers_what_get_would_without_a_body(gateway: Gateway) -> None:
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=32, cols=32)
    data = synthetic.to_bytes(ds)
    assert stow(gateway.url, gateway.auth(), [data]).status_code == 200
    instance = f"{gateway.url}/dicomweb/studies/{uids.study}/series/{uids.series}/instances/{ds.SOPInstanceUID}"
    single = {**gateway.auth(), "Accept": "application/dicom"}
    got, head = httpx.get(instance, headers=single), httpx.head(instance, headers=single)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(data))
    assert httpx.head(instance, headers=gateway.auth()).headers["content-type"].startswith("multipart/related")
    assert httpx.head(instance, headers={**gateway.auth(), "Accept": "image/png"}).status_code == 406

    study = httpx.head(f"{gateway.url}/dicomweb/studies/{uids.study}", headers=gateway.auth())
    assert study.status_code == 200 and study.content == b""
    assert study.headers["content-type"].startswith('multipart/related; type="application/dicom"; boundary=')
    status = httpx.head(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth())
    assert status.status_code == 200 and status.content == b""
    assert status.headers["content-type"] == "application/json"

    missing = instance.replace(ds.SOPInstanceUID, "1.2.3.4")
    assert httpx.head(missing, headers=gateway.auth()).status_code == 404
    assert httpx.head(f"{gateway.url}/dicomweb/studies/1.2.3.4", headers=gateway.auth()).status_code == 404
    assert httpx.head(instance).status_code == 401
