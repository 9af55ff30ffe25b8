"""STOW-RS (PS3.18 10.5): stream a multipart/related body into one S3 object per instance.

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
import hashlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message

from gateway.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart
from gateway.metrics import Metrics
from radstream import keys
from radstream import manifest as manifest_store
from radstream.aws.s3 import ObjectStore, PutOutcome, StorageError, StoredObject
from radstream.dicom import (
    CONFLICT_REASONS,
    RESOURCE_REASONS,
    DicomPartError,
    FailureReason,
    InstanceHeader,
    read_header,
    starts_with_file_meta,
)
from radstream.errors import BadRequest, NotFound, PayloadTooLarge, StorageUnavailable, UnsupportedMediaType
from radstream.manifest import Manifest, ManifestInstance
from radstream.settings import Settings
from radstream.status import ReceivedWrite, StatusStore, StudyState, utcnow
from radstream.telemetry import BufferedTelemetry, TelemetryEvent

log = logging.getLogger("radstream.stow")

DICOM_MEDIA_TYPE = "application/dicom"
PART10_PREAMBLE = b"\x00" * 128 + b"DICM"
PREAMBLE_PROBE_BYTES = 6  # enough to recognise a File Meta element (group 0002) at the start


@dataclass
class StoredInstance:
    header: InstanceHeader
    key: str
    size: int
    sha256: str
    created: bool  # False: identical bytes were stored already
    adopted: bool = False  # identical bytes stored by a request that wrote no manifest for them

    @property
    def in_manifest(self) -> bool:
        """Listed in this request's manifest: new to the pipeline."""
        return self.created or self.adopted


@dataclass
class FailedInstance:
    reason: FailureReason
    detail: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class StowOutcome:
    study_instance_uid: str | None
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    manifest_key: str | None = None

    @property
    def http_status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 some failed or warnings, 409/400/503 none stored."""
        if self.stored:
            warned = any(s.header.warnings for s in self.stored)
            return 202 if self.failed or warned else 200
        reasons = {f.reason for f in self.failed}
        if reasons and reasons <= RESOURCE_REASONS:
            return 503
        if reasons & CONFLICT_REASONS:
            return 409
        return 400


def parse_media_type(content_type: str | None) -> str:
    """Validate the request's media type and return its boundary."""
    if not content_type:
        raise UnsupportedMediaType('Content-Type must be multipart/related; type="application/dicom"')
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/related":
        raise UnsupportedMediaType(
            f'media type {msg.get_content_type()!r} is not supported; send multipart/related; type="{DICOM_MEDIA_TYPE}"'
        )
    root_type = msg.get_param("type")
    if isinstance(root_type, str) and root_type.lower() != DICOM_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"multipart/related type {root_type!r} is not supported; only {DICOM_MEDIA_TYPE} parts are accepted"
        )
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary parameter")
    return boundary


class _Spool:
    """One part's bytes: RAM up to a threshold, then a temporary file; hashed as it arrives."""

    def __init__(self, memory_bytes: int, headers: dict[str, str]) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115 - closed in finally
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.headers = headers
        self._head: bytes | None = b""  # the first bytes, until we know whether a preamble is missing

    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            if len(self._head) < PREAMBLE_PROBE_BYTES:
                return
            data, self._head = self._head, None
            if starts_with_file_meta(data):
                # Part 10 without its 128-byte preamble and "DICM" (dicomweb-client sends this): store the
                # standard file format, so every reader (and WADO-RS clients) can open what we return.
                self._write(PART10_PREAMBLE)
        self._write(data)

    def finish(self) -> None:
        if self._head:  # a part shorter than the probe
            self._write(self._head)
        self._head = None

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)


class _RecordedKeys:
    """What this request learnt of the study's manifests, each asked once per request: whether the request
    that created an object wrote its manifest (usually one creator for a whole re-sent study), and, only
    when one did not, the instance keys that the study's manifests list."""

    def __init__(self, images: ObjectStore, tenant: str) -> None:
        self._images = images
        self._tenant = tenant
        self._by_study: dict[str, set[str]] = {}
        self._creators: dict[tuple[str, str], asyncio.Future[frozenset[str]]] = {}  # shared by parts asking at once
        self._lock = asyncio.Lock()

    async def listed_by_creator(self, study: str, creator: str, key: str) -> bool:
        """Whether the creator's manifest lists ``key`` (it may exist without it: the creator's write of
        that part reached S3 but failed for the creator, which answered 0xA700 and listed the rest)."""
        lookup = self._creators.get((study, creator))
        if lookup is None:
            lookup = asyncio.ensure_future(self._manifest_keys(keys.manifest_key(self._tenant, study, creator)))
            self._creators[(study, creator)] = lookup
        return key in await asyncio.shield(lookup)  # one part cancelled does not cancel the others' answer

    async def _manifest_keys(self, manifest_key: str) -> frozenset[str]:
        try:
            listed = await manifest_store.load(self._images, manifest_key)
        except NotFound:
            return frozenset()
        return frozenset(instance.key for instance in listed.instances)

    async def contains(self, study: str, key: str) -> bool:
        async with self._lock:
            if study not in self._by_study:
                self._by_study[study] = set(await manifest_store.recorded_keys(self._images, self._tenant, study))
        return key in self._by_study[study]


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

    async def store(
        self,
        *,
        tenant: str,
        path_study_uid: str | None,
        content_type: str | None,
        content_length: int | None,
        body: AsyncIterator[bytes],
    ) -> StowOutcome:
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
        recorded = _RecordedKeys(self._images, tenant)
        slots = asyncio.Semaphore(self._settings.stow_concurrent_puts)
        tasks: list[asyncio.Task[StoredInstance | FailedInstance]] = []
        spool: _Spool | None = None
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
                        spool = _Spool(self._settings.spool_memory_bytes, event.headers)
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

        outcome = StowOutcome(study_instance_uid=path_study_uid)
        for result in results:
            if isinstance(result, StoredInstance):
                outcome.stored.append(result)
            else:
                outcome.failed.append(result)
        await self._commit(tenant, request_id, outcome)
        self._metrics.record_stow(outcome)
        self._emit(tenant, outcome, (time.perf_counter() - started) * 1e3)
        return outcome

    def _emit(self, tenant: str, outcome: StowOutcome, request_ms: float) -> None:
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
        spool: _Spool,
        slots: asyncio.Semaphore,
        recorded: _RecordedKeys,
    ) -> StoredInstance | FailedInstance:
        try:
            part_type = spool.headers.get("content-type", DICOM_MEDIA_TYPE).split(";")[0].strip().lower()
            if part_type != DICOM_MEDIA_TYPE:
                return FailedInstance(
                    FailureReason.NOT_APPLICATION_DICOM,
                    f"part Content-Type {part_type!r} is not {DICOM_MEDIA_TYPE}",
                )
            spool.file.seek(0)
            try:
                header = await asyncio.to_thread(read_header, spool.file)  # type: ignore[arg-type]
            except DicomPartError as exc:
                return FailedInstance(exc.reason, exc.detail, exc.sop_class_uid, exc.sop_instance_uid)
            except Exception as exc:  # pydicom raises many kinds for malformed data; the part alone fails
                log.info("part header not parsed: %s", type(exc).__name__)  # its message may quote values
                return FailedInstance(
                    FailureReason.CANNOT_UNDERSTAND, f"the DICOM header cannot be parsed ({type(exc).__name__})"
                )
            if path_study_uid is not None and header.study_instance_uid != path_study_uid:
                return FailedInstance(
                    FailureReason.STUDY_UID_MISMATCH,
                    "StudyInstanceUID does not match the study in the request path",
                    header.sop_class_uid,
                    header.sop_instance_uid,
                )
            key = keys.instance_key(
                tenant, header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            )
            digest = spool.sha256.hexdigest()
            spool.file.seek(0)
            body = spool.file.read() if spool.size <= self._settings.spool_memory_bytes else spool.file
            try:
                put = await self._images.put_once(
                    key,
                    body,
                    sha256=digest,
                    size=spool.size,
                    content_type=DICOM_MEDIA_TYPE,
                    request_id=request_id,
                    transfer_syntax=header.transfer_syntax_uid,
                )
                adopted = put.outcome is PutOutcome.IDENTICAL and await self._unrecorded(
                    tenant, key, header, put.existing, recorded
                )
            except StorageUnavailable as exc:
                return FailedInstance(
                    FailureReason.OUT_OF_RESOURCES, exc.detail, header.sop_class_uid, header.sop_instance_uid
                )
            except StorageError as exc:
                log.error("storing %s failed: %s", header.sop_instance_uid, exc)
                return FailedInstance(
                    FailureReason.PROCESSING_FAILURE,
                    "the object store refused the write",
                    header.sop_class_uid,
                    header.sop_instance_uid,
                )
            if put.outcome is PutOutcome.CONFLICT:
                return FailedInstance(
                    FailureReason.DUPLICATE_SOP_INSTANCE,
                    "different content is stored under this SOPInstanceUID",
                    header.sop_class_uid,
                    header.sop_instance_uid,
                )
            return StoredInstance(
                header, key, spool.size, digest, created=put.outcome is PutOutcome.CREATED, adopted=adopted
            )
        finally:
            spool.file.close()
            slots.release()

    async def _unrecorded(
        self, tenant: str, key: str, header: InstanceHeader, existing: StoredObject | None, recorded: _RecordedKeys
    ) -> bool:
        """Whether identical bytes already stored are in no manifest: left by a request that failed (or is
        still in flight) and not listed by a re-send since. Then this request lists them in its manifest.
        The creator's manifest answers the common case, read once per creator and request; only when it
        does not list the key are the study's manifests read (once per request). Objects without a creator
        (written before creators were recorded) count as recorded."""
        creator = existing.request_id if existing is not None else None
        if creator is None or not keys.is_request_id(creator):
            return False
        if await recorded.listed_by_creator(header.study_instance_uid, creator, key):
            return False
        try:
            return not await recorded.contains(header.study_instance_uid, key)
        except Exception as exc:  # cannot tell: list it again (processed twice at worst, never lost)
            log.warning("manifests of %s not read: %s", header.study_instance_uid, exc)
            return True

    async def _commit(self, tenant: str, request_id: str, outcome: StowOutcome) -> None:
        """Record the study and write the manifest for what this request newly stored or adopted."""
        new: list[StoredInstance] = []
        listed: set[str] = set()
        for inst in outcome.stored:  # an instance sent twice in one request is listed once
            if inst.in_manifest and inst.key not in listed:
                listed.add(inst.key)
                new.append(inst)
        if not new:
            return
        by_study: dict[str, list[StoredInstance]] = {}
        for inst in new:
            by_study.setdefault(inst.header.study_instance_uid, []).append(inst)
        rows: list[tuple[str, ReceivedWrite]] = []  # status rows written whose manifest is not
        try:
            for study, instances in by_study.items():
                key = keys.manifest_key(tenant, study, request_id)
                # The status row must exist before the manifest starts the pipeline.
                rows.append((study, await self._status.record_received(tenant, study, token=request_id)))
                await self._images.put_json(key, _manifest(tenant, study, request_id, instances))
                rows.pop()
                outcome.manifest_key = key
        except (StorageUnavailable, StorageError) as exc:
            log.error("manifest for %d instances not written: %s", len(new), exc)
            await self._undo_rows(tenant, rows)
            raise StorageUnavailable(
                "storage failed while recording the request; re-send it (instances stored already are recognised)",
                headers={"Retry-After": str(self._settings.storage_retry_after_s)},
            ) from exc
        except BaseException:  # cancelled (shutdown) or a bug: the same clean-up, which cancelling cannot stop
            await asyncio.shield(self._undo_rows(tenant, rows))
            raise

    async def _recorded_writer(self, tenant: str, study: str, row: ReceivedWrite) -> bool:
        """Whether the request that wrote the row before ``row`` wrote its manifest."""
        writer = str((row.previous or {}).get("received_by", {}).get("S", ""))
        if not keys.is_request_id(writer):
            return False
        try:
            await self._images.head(keys.manifest_key(tenant, study, writer))
        except Exception:  # missing, or cannot tell: the checks that follow decide
            return False
        return True

    async def _undo_rows(self, tenant: str, rows: list[tuple[str, ReceivedWrite]]) -> None:
        for study, row in rows:  # the study is as it was: not `received` for a request that recorded nothing
            await self._undo_quietly(tenant, study, row)

    async def _undo_quietly(self, tenant: str, study: str, row: ReceivedWrite) -> None:
        if row.previous_state == StudyState.RECEIVED.value and not await self._recorded_writer(tenant, study, row):
            # The row before was another request's `received`, and that request's manifest is not there
            # (yet): if it failed too, restoring its row would leave a study that no manifest started
            # `received`. With no manifest of the study, no row is the truth; with some, the other
            # request's row stands. (If it was only slow, its execution creates the row again.)
            try:
                if not await self._images.list_keys(keys.study_manifest_prefix(tenant, study)):
                    row = row.without_previous()
            except Exception as exc:  # cannot tell: restore the row before, as written
                log.warning("manifests of %s not listed: %s", study, exc)
        try:
            if not await self._status.undo_received(tenant, study, row):
                log.warning("status of %s changed since this request wrote it; left as it is", study)
        except Exception as exc:  # best effort: the manifest is what starts processing
            log.warning("status of %s not restored: %s", study, exc)


def _manifest(tenant: str, study: str, request_id: str, instances: list[StoredInstance]) -> dict[str, object]:
    manifest = Manifest(
        request_id=request_id,
        tenant=tenant,
        study_instance_uid=study,
        received_at=utcnow(),
        instances=[
            ManifestInstance(
                key=i.key,
                sop_class_uid=i.header.sop_class_uid,
                sop_instance_uid=i.header.sop_instance_uid,
                series_instance_uid=i.header.series_instance_uid,
                transfer_syntax_uid=i.header.transfer_syntax_uid,
                modality=i.header.modality,
                size=i.size,
                sha256=i.sha256,
            )
            for i in instances
        ],
    )
    return manifest.model_dump(mode="json")
