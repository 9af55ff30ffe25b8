"""One instance in: its header read, its bytes written once under its key, compared with what is stored.

The same for every front door: the bytes arrive in a seekable file (spooled by the caller, hashed as they
arrived), and the answer is a :class:`StoredInstance` (created, identical, or adopted) or a
:class:`FailedInstance` with its PS3.18 reason. Nothing is reported stored that S3 did not confirm.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from typing import IO

from radstream import keys
from radstream.aws.s3 import ObjectStore, PutOutcome
from radstream.dicom import InstanceHeader, read_header
from radstream.errors import DicomPartError, FailureReason, StorageError, StorageUnavailable
from radstream.ingest.adoption import RecordedKeys, unrecorded
from radstream.ingest.outcome import FailedInstance, StoredInstance

log = logging.getLogger("radstream.ingest")

DICOM_MEDIA_TYPE = "application/dicom"  # the Content-Type of every stored instance object


async def store_instance(
    images: ObjectStore,
    *,
    tenant: str,
    request_id: str,
    expected_study_uid: str | None,
    file: IO[bytes],
    size: int,
    sha256: str,
    in_memory: bool,
    recorded: RecordedKeys,
) -> StoredInstance | FailedInstance:
    """Store the Part 10 bytes of ``file`` (``size`` bytes, ``sha256`` their digest) for ``tenant``.

    ``expected_study_uid``: the study the request is for (STOW-RS's path), or None. ``in_memory``: the file
    is small enough to be sent from RAM; otherwise it is streamed from disk.
    """
    file.seek(0)
    try:
        header = await asyncio.to_thread(read_header, file)  # type: ignore[arg-type]
    except DicomPartError as exc:
        return FailedInstance(exc.reason, exc.detail, exc.sop_class_uid, exc.sop_instance_uid)
    except Exception as exc:  # pydicom raises many kinds for malformed data; the instance alone fails
        log.info("part header not parsed: %s", type(exc).__name__)  # its message may quote values
        return FailedInstance(
            FailureReason.CANNOT_UNDERSTAND, f"the DICOM header cannot be parsed ({type(exc).__name__})"
        )
    if expected_study_uid is not None and header.study_instance_uid != expected_study_uid:
        return FailedInstance(
            FailureReason.STUDY_UID_MISMATCH,
            "StudyInstanceUID does not match the study in the request path",
            header.sop_class_uid,
            header.sop_instance_uid,
        )
    key = keys.instance_key(tenant, header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
    file.seek(0)
    body = file.read() if in_memory else file
    try:
        put = await images.put_once(
            key,
            body,
            sha256=sha256,
            size=size,
            content_type=DICOM_MEDIA_TYPE,
            request_id=request_id,
            transfer_syntax=header.transfer_syntax_uid,
        )
        outcome = put.outcome
        if outcome is PutOutcome.CONFLICT and await _same_data_set(images, key, file, header):
            outcome = PutOutcome.IDENTICAL  # the same data set in another wrapper (preamble, File Meta)
        adopted = outcome is PutOutcome.IDENTICAL and await unrecorded(key, header, put.existing, recorded)
    except StorageUnavailable as exc:
        return FailedInstance(FailureReason.OUT_OF_RESOURCES, exc.detail, header.sop_class_uid, header.sop_instance_uid)
    except StorageError as exc:
        log.error("storing %s failed: %s", header.sop_instance_uid, exc)
        return FailedInstance(
            FailureReason.PROCESSING_FAILURE,
            "the object store refused the write",
            header.sop_class_uid,
            header.sop_instance_uid,
        )
    if outcome is PutOutcome.CONFLICT:
        return FailedInstance(
            FailureReason.DUPLICATE_SOP_INSTANCE,
            "different content is stored under this SOPInstanceUID",
            header.sop_class_uid,
            header.sop_instance_uid,
        )
    return StoredInstance(header, key, size, sha256, created=outcome is PutOutcome.CREATED, adopted=adopted)


def _data_set_digest(file: IO[bytes], offset: int) -> str:
    digest = hashlib.sha256()
    file.seek(offset)
    while chunk := file.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


async def _same_data_set(images: ObjectStore, key: str, file: IO[bytes], header: InstanceHeader) -> bool:
    """Whether the object stored under ``key`` holds the same data set, byte for byte, as ``file`` (only its
    preamble or File Meta differ: one client wrote no preamble, another a File Meta of its own, C-STORE
    none). Asked only when the whole files differ, so an identical re-send costs nothing more."""
    if header.data_set_offset is None:
        return False
    stored = io.BytesIO(await images.get_bytes(key))
    try:
        stored_header = await asyncio.to_thread(read_header, stored)
    except Exception:  # what is stored is not readable as DICOM: not the same data set
        return False
    if stored_header.data_set_offset is None or stored_header.transfer_syntax_uid != header.transfer_syntax_uid:
        return False
    ours, theirs = await asyncio.gather(
        asyncio.to_thread(_data_set_digest, file, header.data_set_offset),
        asyncio.to_thread(_data_set_digest, stored, stored_header.data_set_offset),
    )
    return ours == theirs
