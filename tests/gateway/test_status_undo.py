"""A request whose manifest cannot be written leaves the study's status row as it was, removes nothing,
and a re-send lists what it left in its own manifest.

StowService runs in-process against the real emulator; only the manifest write is made to fail (S3 down
between the instances and the manifest), since every other call must succeed for the case to arise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.dicomweb.stow import StowService
from gateway.metrics import Metrics
from loadtest import synthetic
from radstream.aws import config as aws
from radstream.aws.dynamodb import StatusStore
from radstream.aws.kinesis import TelemetryStream
from radstream.aws.s3 import ObjectStore
from radstream.errors import StorageUnavailable
from radstream.settings import Settings
from radstream.status import ReceivedWrite, StudyState
from radstream.telemetry import BufferedTelemetry
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
        telemetry = BufferedTelemetry(TelemetryStream(kinesis, settings.telemetry_stream))
        yield {
            "status": status,
            "images": ObjectStore(s3, settings.images_bucket),
            "failing": StowService(settings, ManifestsFail(s3, settings.images_bucket), status, Metrics(), telemetry),
            "working": StowService(settings, ObjectStore(s3, settings.images_bucket), status, Metrics(), telemetry),
        }


def _body(uids: synthetic.StudyUids, first: int) -> bytes:
    return multipart([synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=64, cols=64)) for i in (first, first + 1)])


async def _store(service: StowService, uids: synthetic.StudyUids, first: int, body: bytes | None = None) -> Any:
    body = body if body is not None else _body(uids, first)

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks(body, 4096):
            yield chunk

    return await service.store(
        tenant=TENANT, path_study_uid=uids.study, content_type=CONTENT_TYPE, content_length=None, body=stream()
    )


def _instances(uids: synthetic.StudyUids) -> str:
    return f"instances/{TENANT}/{uids.study}/"


def _manifests(uids: synthetic.StudyUids) -> str:
    return f"manifests/{TENANT}/{uids.study}/"


async def test_a_new_study_has_no_status_row_after_the_failed_request_and_a_resend_records_it(
    parts: dict[str, Any],
) -> None:
    uids = synthetic.StudyUids.new()
    images: ObjectStore = parts["images"]
    body = _body(uids, 0)
    with pytest.raises(StorageUnavailable, match="re-send it"):
        await _store(parts["failing"], uids, 0, body)
    assert await parts["status"].get(TENANT, uids.study, instances=0, series=0) is None
    assert len(await images.list_keys(_instances(uids))) == 2  # left, in no manifest
    assert await images.list_keys(_manifests(uids)) == []

    outcome = await _store(parts["working"], uids, 0, body)  # the client's retry: the same bytes
    assert [(s.created, s.adopted) for s in outcome.stored] == [(False, True), (False, True)]
    manifests = await images.list_keys(_manifests(uids))
    assert manifests == [outcome.manifest_key]
    listed = json.loads(await images.get_bytes(manifests[0]))["instances"]
    assert sorted(i["key"] for i in listed) == sorted(await images.list_keys(_instances(uids)))
    row = await parts["status"].get(TENANT, uids.study, instances=2, series=1)
    assert row is not None and row.status is StudyState.RECEIVED

    again = await _store(parts["working"], uids, 0, body)  # recorded now: a further re-send adds nothing
    assert [(s.created, s.adopted) for s in again.stored] == [(False, False), (False, False)]
    assert again.manifest_key is None and await images.list_keys(_manifests(uids)) == manifests


async def test_an_instance_another_request_was_told_is_stored_survives_the_failure_of_its_creator(
    settings: Settings, parts: dict[str, Any]
) -> None:
    """A creates X; while A is still recording, B sends the same bytes and is told X is stored; then A's
    manifest fails. X must still be there, and B's manifest must list it."""
    uids = synthetic.StudyUids.new()
    body = _body(uids, 0)
    b_answered, a_stored = asyncio.Event(), asyncio.Event()
    a = StowService(
        settings,
        _Gate(parts["images"]._s3, settings.images_bucket, b_answered, a_stored),
        parts["status"],
        Metrics(),
        BufferedTelemetry(TelemetryStream(None, settings.telemetry_stream)),
    )

    async def first() -> None:
        await _store(a, uids, 0, body)

    async def second() -> Any:
        await a_stored.wait()  # A's instances are stored and A is writing its manifest
        try:
            return await _store(parts["working"], uids, 0, body)
        finally:
            b_answered.set()

    a_result, b_outcome = await asyncio.gather(first(), second(), return_exceptions=True)
    assert isinstance(a_result, StorageUnavailable)
    assert b_outcome.http_status == 200 and all(s.adopted for s in b_outcome.stored)
    stored = sorted(await parts["images"].list_keys(_instances(uids)))
    assert stored == sorted(s.key for s in b_outcome.stored)
    listed = json.loads(await parts["images"].get_bytes(b_outcome.manifest_key))["instances"]
    assert sorted(i["key"] for i in listed) == stored


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
    assert after == before  # completed, same result, same times: not `received` for a request not recorded
    assert len(await parts["images"].list_keys(_instances(uids))) == 4  # the two new ones are left
    assert len(await parts["images"].list_keys(_manifests(uids))) == 1  # and listed in no manifest


async def test_a_row_changed_since_is_left_alone(parts: dict[str, Any]) -> None:
    study = synthetic.StudyUids.new().study
    status: StatusStore = parts["status"]
    write = await status.record_received(TENANT, study)
    assert write.previous is None
    await status.set_state(TENANT, study, StudyState.PROCESSING)  # someone else moved it on
    assert await status.undo_received(TENANT, study, write) is False
    row = await status.get(TENANT, study, instances=0, series=0)
    assert row is not None and row.status is StudyState.PROCESSING


class _Gate(ObjectStore):
    """Manifest writes that fail, each once its gate opens."""

    def __init__(self, client: Any, bucket: str, gate: asyncio.Event, reached: asyncio.Event | None = None) -> None:
        super().__init__(client, bucket)
        self.gate = gate
        self.reached = reached or asyncio.Event()

    async def put_json(self, key: str, document: Any) -> None:
        self.reached.set()
        await self.gate.wait()
        raise StorageUnavailable("storage unavailable during PutObject: EndpointConnectionError")


class _Signalling(StatusStore):
    def __init__(self, client: Any, table: str, written: asyncio.Event) -> None:
        super().__init__(client, table)
        self.written = written

    async def record_received(self, tenant: str, study: str, token: str | None = None) -> ReceivedWrite:
        write = await super().record_received(tenant, study, token)
        self.written.set()
        return write


async def test_two_failed_requests_for_a_new_study_leave_no_row(settings: Settings) -> None:
    """A writes `received`, B writes `received` over it, A undoes (B's write stands), B undoes: B's row
    before was A's `received`, and with no manifest of the study written there must be no row at all."""
    uids = synthetic.StudyUids.new()
    a_written, b_written, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    session = aws.session(settings)
    async with (
        session.client("s3", **aws.client_kwargs(settings)) as s3,
        session.client("dynamodb", **aws.client_kwargs(settings)) as ddb,
        session.client("kinesis", **aws.client_kwargs(settings)) as kinesis,
    ):
        telemetry = BufferedTelemetry(TelemetryStream(kinesis, settings.telemetry_stream))
        status_a = _Signalling(ddb, settings.status_table, a_written)
        status_b = _Signalling(ddb, settings.status_table, b_written)
        a = StowService(settings, _Gate(s3, settings.images_bucket, b_written), status_a, Metrics(), telemetry)
        b = StowService(settings, _Gate(s3, settings.images_bucket, a_done), status_b, Metrics(), telemetry)

        async def first() -> None:
            try:
                await _store(a, uids, 0)
            finally:
                a_done.set()

        async def second() -> None:
            await a_written.wait()  # B writes its row after A
            await _store(b, uids, 2)

        results = await asyncio.gather(first(), second(), return_exceptions=True)
        assert all(isinstance(r, StorageUnavailable) for r in results), results
        assert await StatusStore(ddb, settings.status_table).get(TENANT, uids.study, instances=0, series=0) is None
        assert await ObjectStore(s3, settings.images_bucket).list_keys(_manifests(uids)) == []


class _ManifestsBreak(ObjectStore):
    async def put_json(self, key: str, document: Any) -> None:
        raise RuntimeError("unexpected failure while writing the manifest")


async def test_any_other_failure_while_recording_cleans_up_the_same_way(
    settings: Settings, parts: dict[str, Any]
) -> None:
    """Not only storage errors: whatever interrupts the manifest write (a bug, a cancellation at shutdown)
    puts the status row back as it was, writes no manifest, then propagates."""
    uids = synthetic.StudyUids.new()
    breaking = StowService(
        settings,
        _ManifestsBreak(parts["images"]._s3, settings.images_bucket),
        parts["status"],
        Metrics(),
        BufferedTelemetry(TelemetryStream(None, settings.telemetry_stream)),
    )
    with pytest.raises(RuntimeError, match="unexpected failure"):
        await _store(breaking, uids, 0)
    assert await parts["status"].get(TENANT, uids.study, instances=0, series=0) is None
    assert await parts["images"].list_keys(_manifests(uids)) == []


class _CountingHeads(ObjectStore):
    """Counts the manifest lookups (HEAD or GET)."""

    def __init__(self, client: Any, bucket: str) -> None:
        super().__init__(client, bucket)
        self.heads: list[str] = []

    async def head(self, key: str) -> Any:
        self.heads.append(key)
        return await super().head(key)

    async def get_bytes(self, key: str) -> bytes:
        self.heads.append(key)
        return await super().get_bytes(key)


async def test_a_resent_study_looks_up_its_creator_s_manifest_once(settings: Settings, parts: dict[str, Any]) -> None:
    uids = synthetic.StudyUids.new()
    body = multipart([synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=32, cols=32)) for i in range(6)])
    first = await _store(parts["working"], uids, 0, body)
    assert all(s.created for s in first.stored) and len(first.stored) == 6
    counting = _CountingHeads(parts["images"]._s3, settings.images_bucket)
    resend = StowService(
        settings,
        counting,
        parts["status"],
        Metrics(),
        BufferedTelemetry(TelemetryStream(None, settings.telemetry_stream)),
    )
    again = await _store(resend, uids, 0, body)
    assert [(s.created, s.adopted) for s in again.stored] == [(False, False)] * 6 and again.manifest_key is None
    assert [k for k in counting.heads if k.startswith("manifests/")] == [first.manifest_key]


class _StoredButReportedFailed(ObjectStore):
    """S3 stores every part, but the answer for one key is lost (a read timeout after the write)."""

    def __init__(self, client: Any, bucket: str, lost: str) -> None:
        super().__init__(client, bucket)
        self.lost = lost

    async def put_once(self, key: str, body: Any, **kwargs: Any) -> Any:
        result = await super().put_once(key, body, **kwargs)
        if key.endswith(f"/{self.lost}.dcm"):
            raise StorageUnavailable("storage unavailable during PutObject: ReadTimeoutError")
        return result


async def test_an_instance_stored_but_reported_failed_is_listed_by_the_resend(
    settings: Settings, parts: dict[str, Any]
) -> None:
    """The creator's manifest exists but does not list the instance (its write reached S3, the answer did
    not: 0xA700 for that part). A re-send must list it, or it would be stored, acknowledged and never
    processed."""
    uids = synthetic.StudyUids.new()
    datasets = [synthetic.ct_slice(uids, i, rows=32, cols=32) for i in range(2)]
    body = multipart([synthetic.to_bytes(ds) for ds in datasets])
    lost = str(datasets[1].SOPInstanceUID)
    flaky = StowService(
        settings,
        _StoredButReportedFailed(parts["images"]._s3, settings.images_bucket, lost),
        parts["status"],
        Metrics(),
        BufferedTelemetry(TelemetryStream(None, settings.telemetry_stream)),
    )
    first = await _store(flaky, uids, 0, body)
    assert first.http_status == 202 and [f.sop_instance_uid for f in first.failed] == [lost]

    again = await _store(parts["working"], uids, 0, body)
    assert again.http_status == 200
    assert {s.header.sop_instance_uid: s.adopted for s in again.stored} == {
        str(datasets[0].SOPInstanceUID): False,
        lost: True,
    }
    listed = json.loads(await parts["images"].get_bytes(again.manifest_key))["instances"]
    assert [i["sop_instance_uid"] for i in listed] == [lost]


async def test_an_instance_sent_twice_in_one_request_is_listed_once(parts: dict[str, Any]) -> None:
    uids = synthetic.StudyUids.new()
    part = synthetic.to_bytes(synthetic.ct_slice(uids, 0, rows=32, cols=32))
    outcome = await _store(parts["working"], uids, 0, multipart([part, part]))
    assert outcome.http_status == 200 and len(outcome.stored) == 2
    listed = json.loads(await parts["images"].get_bytes(outcome.manifest_key))["instances"]
    assert len(listed) == 1


async def test_a_stage_recreates_a_status_row_another_request_s_undo_removed(parts: dict[str, Any]) -> None:
    """C wrote `received`; A wrote over it and failed; with C's manifest not yet written, A's undo removed
    the row; then C's manifest started the pipeline, whose first status write must not fail."""
    study = synthetic.StudyUids.new().study
    status: StatusStore = parts["status"]
    write = await status.record_received(TENANT, study)
    assert await status.undo_received(TENANT, study, write)  # the row is gone
    await status.set_state(TENANT, study, StudyState.PROCESSING, stage="validate", stage_ms=12.5, model="m")
    row = await status.get(TENANT, study, instances=1, series=1)
    assert row is not None and row.status is StudyState.PROCESSING
    assert row.stage_times_ms == {"validate": 12.5} and row.model == "m" and row.created_at is not None
    await status.set_state(TENANT, study, StudyState.COMPLETED, stage="store", stage_ms=3.0)  # the usual path
    row = await status.get(TENANT, study, instances=1, series=1)
    assert row is not None and row.status is StudyState.COMPLETED
    assert row.stage_times_ms == {"validate": 12.5, "store": 3.0}
