"""A request whose manifest cannot be written leaves the study's status row as it was.

StowService runs in-process against the real emulator; only the manifest write is made to fail (S3 down
between the instances and the manifest), since every other call must succeed for the case to arise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.dicomweb.stow import StowService
from gateway.metrics import Metrics
from radstream import aws, synthetic
from radstream.errors import StorageUnavailable
from radstream.settings import Settings
from radstream.status import StatusStore, StudyState
from radstream.storage import ObjectStore
from radstream.telemetry import BufferedTelemetry, Telemetry
from tests.gateway.stowhelp import CONTENT_TYPE, chunks, multipart

TENANT = "alpha"


class ManifestsFail(ObjectStore):
    async def put_json(self, key: str, document: Any) -> None:
        raise StorageUnavailable("storage unavailable during PutObject: EndpointConnectionError")


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    session = aws.session(settings)
    async with (
        session.client("s3", **aws.client_kwargs(settings)) as s3,
        session.client("dynamodb", **aws.client_kwargs(settings)) as ddb,
        session.client("kinesis", **aws.client_kwargs(settings)) as kinesis,
    ):
        status = StatusStore(ddb, settings.status_table)
        telemetry = BufferedTelemetry(Telemetry(kinesis, settings.telemetry_stream))
        yield {
            "status": status,
            "images": ObjectStore(s3, settings.images_bucket),
            "failing": StowService(settings, ManifestsFail(s3, settings.images_bucket), status, Metrics(), telemetry),
            "working": StowService(settings, ObjectStore(s3, settings.images_bucket), status, Metrics(), telemetry),
        }


async def _store(service: StowService, uids: synthetic.StudyUids, first: int) -> Any:
    body = multipart([synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=64, cols=64)) for i in (first, first + 1)])

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks(body, 4096):
            yield chunk

    return await service.store(
        tenant=TENANT, path_study_uid=uids.study, content_type=CONTENT_TYPE, content_length=None, body=stream()
    )


async def test_a_new_study_has_no_status_row_after_the_failed_request(parts: dict[str, Any]) -> None:
    uids = synthetic.StudyUids.new()
    with pytest.raises(StorageUnavailable, match="nothing was stored"):
        await _store(parts["failing"], uids, 0)
    assert await parts["status"].get(TENANT, uids.study, instances=0, series=0) is None
    assert await parts["images"].list_keys(f"instances/{TENANT}/{uids.study}/") == []


async def test_a_known_study_keeps_its_status_after_the_failed_request(parts: dict[str, Any]) -> None:
    uids = synthetic.StudyUids.new()
    outcome = await _store(parts["working"], uids, 0)
    assert len(outcome.stored) == 2
    status: StatusStore = parts["status"]
    await status.set_state(
        TENANT, uids.study, StudyState.COMPLETED, stage="store", stage_ms=12.5, result_location="s3://r"
    )
    before = await status.get(TENANT, uids.study, instances=2, series=1)

    with pytest.raises(StorageUnavailable):
        await _store(parts["failing"], uids, 2)  # two more slices: their manifest fails

    after = await status.get(TENANT, uids.study, instances=2, series=1)
    assert after == before  # completed, same result, same times: not `received` for instances that are gone
    assert len(await parts["images"].list_keys(f"instances/{TENANT}/{uids.study}/")) == 2


async def test_a_row_changed_since_is_left_alone(parts: dict[str, Any]) -> None:
    study = synthetic.StudyUids.new().study
    status: StatusStore = parts["status"]
    write = await status.record_received(TENANT, study)
    assert write.previous is None
    await status.set_state(TENANT, study, StudyState.PROCESSING)  # someone else moved it on
    assert await status.undo_received(TENANT, study, write) is False
    row = await status.get(TENANT, study, instances=0, series=0)
    assert row is not None and row.status is StudyState.PROCESSING
