"""STOW-RS (PS3.18 10.5): stream a multipart/related body into one S3 object per instance, through the
ingestion core (radstream/ingest/) that every front door shares.

Memory is bounded: each part is spooled (RAM up to ``spool_memory_bytes``, then a temporary file) while
its SHA-256 is computed; header parsing and the conditional S3 write of a part run as a task, and at most
``stow_concurrent_puts`` tasks run per request: when they are all busy the body is not read further
(backpressure to the client). An instance is reported stored only after S3 confirmed the write.

A request that fails as a whole (size limit, storage down, a manifest not written) claims nothing, and
removes nothing either: an instance object is write-once and may already be another request's answer
(that request re-sent the same bytes while this one was in flight, and was told "stored"). What it
created stays, unlisted in any manifest, and carries this request's id; a re-send finds it identical,
sees that no manifest of that request exists, and lists it in its own manifest (adopts it), so it is
processed once the client is told it is stored. When the failure comes after the study's status row was
written, the row is put back as it was: a new study has none, a known one keeps its status, unless
something changed the row since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from gateway.dicomweb.media_type import parse_media_type
from gateway.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart
from gateway.dicomweb.spool import Spool
from gateway.metrics import Metrics
from radstream import keys
from radstream.aws.dynamodb import StatusStore
from radstream.aws.s3 import ObjectStore
from radstream.errors import BadRequest, FailureReason, PayloadTooLarge
from radstream.ingest.adoption import RecordedKeys
from radstream.ingest.commit import Committer
from radstream.ingest.instance import DICOM_MEDIA_TYPE, store_instance
from radstream.ingest.outcome import FailedInstance, IngestOutcome, StoredInstance
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry, TelemetryEvent

log = logging.getLogger("radstream.stow")


class StowService:
    def __init__(
        self,
        settings: Settings,
        images: ObjectStore,
        status: StatusStore,
        metrics: Metrics,
        telemetry: BufferedTelemetry,
    ) -> None:
        self._telemetry = telemetry
        self._settings = settings
        self._images = images
        self._status = status
        self._metrics = metrics
        self._committer = Committer(images, status, retry_after_s=settings.storage_retry_after_s)

    async def store(
        self,
        *,
        tenant: str,
        path_study_uid: str | None,
        content_type: str | None,
        content_length: int | None,
        body: AsyncIterator[bytes],
    ) -> IngestOutcome:
        started = time.perf_counter()
        boundary = parse_media_type(content_type)
        limit = self._settings.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"request body of {content_length} bytes exceeds the limit of {limit} bytes")
        if path_study_uid is not None and not keys.is_uid(path_study_uid):
            raise BadRequest(f"{path_study_uid!r} in the path is not a valid Study Instance UID")
        try:
            parser = MultipartParser(boundary)
        except MultipartError as exc:
            raise BadRequest(str(exc)) from exc

        request_id = keys.new_request_id()
        recorded = RecordedKeys(self._images, tenant)
        slots = asyncio.Semaphore(self._settings.stow_concurrent_puts)
        tasks: list[asyncio.Task[StoredInstance | FailedInstance]] = []
        spool: Spool | None = None
        received = 0
        try:
            async for chunk in body:
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                try:
                    events = parser.feed(chunk)
                except MultipartError as exc:
                    raise BadRequest(f"malformed multipart body: {exc}") from exc
                for event in events:
                    if isinstance(event, PartStart):
                        if parser.parts_started > self._settings.stow_max_parts:
                            raise PayloadTooLarge(
                                f"the request has more than {self._settings.stow_max_parts} parts; send the study "
                                "in several requests"
                            )
                        spool = Spool(self._settings.spool_memory_bytes, event.headers)
                    elif isinstance(event, PartData) and spool is not None:
                        spool.write(event.data)
                    elif isinstance(event, PartEnd) and spool is not None:
                        spool.finish()
                        await slots.acquire()
                        tasks.append(
                            asyncio.create_task(
                                self._store_part(tenant, request_id, path_study_uid, spool, slots, recorded)
                            )
                        )
                        spool = None
            if parser.parts_started == 0:
                raise BadRequest("the multipart body contains no parts (is the boundary right?)")
            results = list(await asyncio.gather(*tasks))
            if spool is not None:
                spool.file.close()
                results.append(
                    FailedInstance(FailureReason.TRUNCATED_PART, "the body ended before this part's closing boundary")
                )
            elif not parser.complete:  # inside a part's headers, or where the next part or the close would be
                results.append(
                    FailedInstance(
                        FailureReason.TRUNCATED_PART,
                        "the body ended after a boundary, before the next part's data or the closing boundary",
                    )
                )
        except BaseException:
            if spool is not None:
                spool.file.close()
            # What was stored stays (see the module docstring); the parts in flight finish first.
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

        outcome = IngestOutcome(study_instance_uid=path_study_uid)
        for result in results:
            if isinstance(result, StoredInstance):
                outcome.stored.append(result)
            else:
                outcome.failed.append(result)
        await self._committer.commit(tenant, request_id, outcome)
        self._metrics.record_stow(outcome)
        self._emit(tenant, outcome, (time.perf_counter() - started) * 1e3)
        return outcome

    def _emit(self, tenant: str, outcome: IngestOutcome, request_ms: float) -> None:
        """Telemetry off the response path (buffered, bounded; see BufferedTelemetry)."""
        studies = {s.header.study_instance_uid for s in outcome.stored if s.created}
        if not studies:
            return
        events = [
            TelemetryEvent(
                stage="stow",
                tenant=tenant,
                study_uid=study,
                duration_ms=request_ms,
                instances=sum(1 for s in outcome.stored if s.created and s.header.study_instance_uid == study),
                outcome="ok" if not outcome.failed else "failed",
            )
            for study in studies
        ]
        self._telemetry.emit(*events)

    async def _store_part(
        self,
        tenant: str,
        request_id: str,
        path_study_uid: str | None,
        spool: Spool,
        slots: asyncio.Semaphore,
        recorded: RecordedKeys,
    ) -> StoredInstance | FailedInstance:
        try:
            part_type = spool.headers.get("content-type", DICOM_MEDIA_TYPE).split(";")[0].strip().lower()
            if part_type != DICOM_MEDIA_TYPE:
                return FailedInstance(
                    FailureReason.NOT_APPLICATION_DICOM,
                    f"part Content-Type {part_type!r} is not {DICOM_MEDIA_TYPE}",
                )
            return await store_instance(
                self._images,
                tenant=tenant,
                request_id=request_id,
                expected_study_uid=path_study_uid,
                file=spool.file,
                size=spool.size,
                sha256=spool.sha256.hexdigest(),
                in_memory=spool.size <= self._settings.spool_memory_bytes,
                recorded=recorded,
            )
        finally:
            spool.file.close()
            slots.release()


def get_stow(request: Request) -> StowService:
    stow: StowService = request.state.stow
    return stow


StowDep = Annotated[StowService, Depends(get_stow)]
