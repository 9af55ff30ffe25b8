"""Size limits, storage outages and memory: each against its own gateway and emulator processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtest import synthetic
from radstream.errors import FailureReason
from radstream.keys import instance_key
from radstream.settings import Settings
from tests.conftest import Emulator, Gateway, free_port, make_settings, start_emulator, start_gateway
from tests.gateway.stowhelp import BOUNDARY, CONTENT_TYPE, chunks, multipart, reasons, referenced, stow

LIMIT = 300_000


@pytest.fixture(scope="module")
async def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, Gateway]]:
    state = tmp_path_factory.mktemp("limits")
    emu = start_emulator(state)
    settings = make_settings(emu.url, state, max_upload_bytes=LIMIT, aws_max_attempts=1)
    from infra.local.provision import provision

    await provision(settings, with_pipeline=False)
    gw = start_gateway(settings)
    yield emu, gw
    gw.supervisor.stop()
    emu.supervisor.stop()


def two_slices() -> tuple[synthetic.StudyUids, list[bytes]]:
    uids = synthetic.StudyUids.new()
    return uids, [synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=256, cols=256)) for i in range(2)]  # 131 kB


def test_content_length_over_limit_is_413(small_stack: tuple[Emulator, Gateway]) -> None:
    _, gw = small_stack
    _, parts = two_slices()
    response = stow(gw.url, gw.auth(), parts * 2)
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]


def test_chunked_over_limit_is_413_records_nothing_and_a_resend_within_it_is_processed(
    small_stack: tuple[Emulator, Gateway],
) -> None:
    emu, gw = small_stack
    uids, parts = two_slices()
    more = [synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=256, cols=256)) for i in range(2, 4)]
    response = stow(gw.url, gw.auth(), parts + more, chunked=True)
    assert response.status_code == 413
    s3 = emu.client("s3")
    bucket = gw.settings.images_bucket

    def keys(prefix: str) -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    # Instances stored before the limit was hit (if any were by then) are left (write-once: nothing is
    # deleted) but recorded nowhere: no manifest, no status, so nothing is processed and nothing is claimed.
    assert len(keys(f"instances/alpha/{uids.study}/")) <= 2
    assert keys(f"manifests/alpha/{uids.study}/") == []
    assert httpx.get(f"{gw.url}/v1/studies/{uids.study}", headers=gw.auth()).status_code == 404

    resent = stow(gw.url, gw.auth(), parts, chunked=True)  # the client sends what fits
    assert resent.status_code == 200
    manifests = keys(f"manifests/alpha/{uids.study}/")
    assert len(manifests) == 1
    listed = json.loads(s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read())["instances"]
    stored = keys(f"instances/alpha/{uids.study}/")
    assert len(stored) == 2 and sorted(i["key"] for i in listed) == sorted(stored)
    assert httpx.get(f"{gw.url}/v1/studies/{uids.study}", headers=gw.auth()).json()["status"] == "received"


def test_under_limit_is_stored(small_stack: tuple[Emulator, Gateway]) -> None:
    _, gw = small_stack
    _, parts = two_slices()
    assert stow(gw.url, gw.auth(), parts, chunked=True).status_code == 200


def test_storage_down_is_503_and_nothing_claimed(small_stack: tuple[Emulator, Gateway]) -> None:
    emu, gw = small_stack
    emu.supervisor.stop()  # the object store goes away under the running gateway
    _, parts = two_slices()
    response = stow(gw.url, gw.auth(), parts)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert referenced(body) == []
    assert reasons(body) == [FailureReason.OUT_OF_RESOURCES] * 2
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"] == "storage_unavailable"
    uids = synthetic.StudyUids.new()
    for path in (
        f"/v1/studies/{uids.study}",
        f"/v1/studies/{uids.study}/results",
        f"/dicomweb/studies/{uids.study}",
        f"/dicomweb/studies/{uids.study}/series/{uids.series}/instances/1.2.3",
    ):
        response = httpx.get(f"{gw.url}{path}", headers=gw.auth())
        assert response.status_code == 503, path
        assert int(response.headers["retry-after"]) > 0, path  # every 503 says when to come back


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_one_gigabyte_request_in_bounded_memory(emulator: Emulator, settings: Settings, tmp_path: Path) -> None:
    """~1 GB in one STOW request (100 instances of 10 MB); the gateway's peak RSS stays under 300 MB."""
    gw = start_gateway(make_settings(emulator.url, tmp_path))
    try:
        uids = synthetic.StudyUids.new()
        template = synthetic.ct_slice(uids, 0, rows=2240, cols=2240)  # 10 MB of pixels
        template.PixelData = np.random.default_rng(1).integers(0, 3000, (2240, 2240), dtype=np.int16).tobytes()
        count = 100
        sop_uids = [f"1.2.826.0.1.3680043.10.1.{i}" for i in range(count)]

        def body() -> Iterator[bytes]:
            for i in range(count):
                template.SOPInstanceUID = sop_uids[i]
                template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
                yield from chunks(multipart([synthetic.to_bytes(template)])[: -len(f"--{BOUNDARY}--\r\n")], 1 << 20)
            yield f"--{BOUNDARY}--\r\n".encode()

        before_kb = _vm_hwm_kb(gw.pid)
        response = httpx.post(
            f"{gw.url}/dicomweb/studies",
            content=body(),
            headers={**gw.auth(), "Content-Type": CONTENT_TYPE},
            timeout=600,
        )
        assert response.status_code == 200, response.text[:500]
        assert len(referenced(response.json())) == count
        peak_mb = _vm_hwm_kb(gw.pid) / 1024
        print(f"gateway VmHWM before {before_kb / 1024:.0f} MB, after 1 GB request {peak_mb:.0f} MB")
        assert peak_mb < 300
        key = instance_key("alpha", uids.study, uids.series, sop_uids[-1])
        head = emulator.client("s3").head_object(Bucket=settings.images_bucket, Key=key)
        assert head["ContentLength"] > 10_000_000
    finally:
        gw.supervisor.stop()


@pytest.fixture(scope="module")
def few_parts(settings: Settings) -> Iterator[Gateway]:
    gw = start_gateway(settings.model_copy(update={"http_port": free_port(), "stow_max_parts": 3}))
    yield gw
    gw.supervisor.stop()


def test_more_parts_than_allowed_is_413_and_claims_nothing(few_parts: Gateway) -> None:
    uids = synthetic.StudyUids.new()
    parts = [synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=16, cols=16)) for i in range(4)]
    response = stow(few_parts.url, few_parts.auth(), parts, chunked=True)
    assert response.status_code == 413
    assert "more than 3 parts" in response.json()["detail"]
    assert httpx.get(f"{few_parts.url}/v1/studies/{uids.study}", headers=few_parts.auth()).status_code == 404
    assert stow(few_parts.url, few_parts.auth(), parts[:3]).status_code == 200
