"""The one error tree of RadStream's core: every domain error carries its HTTP status and a stable code.

Each package that has errors of its own keeps them in one ``errors`` module, under :class:`RadStreamError`:
``gateway/errors.py`` (and the one handler that renders every error), ``worker/formats/errors.py`` (the
error names the state machine's Retry and Catch match), ``worker/inference/triton/errors.py`` (the
Triton adapter), ``worker/models/errors.py``, ``worker/results/errors.py``.
"""

from __future__ import annotations

import traceback
from enum import IntEnum
from pathlib import Path


class RadStreamError(Exception):
    """Base of every error RadStream raises on purpose.

    ``status_code`` is what the gateway answers; ``error`` is a stable machine-readable code.
    """

    status_code: int = 500
    error: str = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, log_message: str | None = None) -> None:
        """``detail`` is what a client may read; ``log_message`` (default: the detail), what ``str()`` and
        so the logs say, which may name buckets, tables and keys."""
        super().__init__(log_message or detail)
        self.detail = detail
        if headers is not None:
            self.headers = headers


class BadRequest(RadStreamError):
    status_code = 400
    error = "bad_request"


class Conflict(RadStreamError):
    status_code = 409
    error = "conflict"


class Unauthorized(RadStreamError):
    status_code = 401
    error = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="radstream"'}


class NotFound(RadStreamError):
    status_code = 404
    error = "not_found"


class NotAcceptable(RadStreamError):
    status_code = 406
    error = "not_acceptable"


class PayloadTooLarge(RadStreamError):
    status_code = 413
    error = "payload_too_large"


class UnsupportedMediaType(RadStreamError):
    status_code = 415
    error = "unsupported_media_type"


class StorageUnavailable(RadStreamError):
    """The object store or status table did not answer; the client should retry later."""

    status_code = 503
    error = "storage_unavailable"


class StorageError(RadStreamError):
    """A storage call was refused for a reason other than unavailability (permissions, a missing bucket or
    table, a bad request): not the client's fault and not worth a retry. ``detail`` names the AWS code
    only; the log message says which call failed and why."""

    status_code = 500
    error = "storage_error"


class TaskClosed(RadStreamError):
    """Step Functions closed the task already (timed out, answered before, execution stopped); the detail
    is the service's code (TaskTimedOut, TaskDoesNotExist, InvalidToken)."""

    status_code = 409
    error = "task_closed"

    @property
    def code(self) -> str:
        return self.detail


class ServiceBusy(RadStreamError):
    """Every upload slot is taken; the client should retry after Retry-After seconds."""

    status_code = 503
    error = "busy"


# ---------------------------------------------------------------- DICOM failure reasons (PS3.18 Annex I)
class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values used in Store Instances Responses (PS3.18 Annex I)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111  # different bytes under a SOP Instance UID already stored
    OUT_OF_RESOURCES = 0xA700
    STUDY_UID_MISMATCH = 0xA900  # the instance's Study Instance UID does not match the request path
    CANNOT_UNDERSTAND = 0xC000  # not a DICOM Part 10 stream, or it could not be parsed
    MISSING_ATTRIBUTE = 0xC001  # a required attribute (SOP Class/Instance, Study/Series UID) is absent
    INVALID_ATTRIBUTE = 0xC002  # a required attribute is present but not a valid UID
    TRUNCATED_PART = 0xC003  # the multipart body ended inside this part
    NOT_APPLICATION_DICOM = 0xC004  # the part's own Content-Type is not application/dicom
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class WarningReason(IntEnum):
    """Warning Reason (0008,1196) values (PS3.18 Annex I)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


# Failures that mean "the request conflicts with what the server accepts" (HTTP 409 when nothing stored).
CONFLICT_REASONS = frozenset(
    {
        FailureReason.DUPLICATE_SOP_INSTANCE,
        FailureReason.STUDY_UID_MISMATCH,
        FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
    }
)
# Failures caused by the server's storage, not by the data (HTTP 503 when nothing stored).
RESOURCE_REASONS = frozenset({FailureReason.OUT_OF_RESOURCES, FailureReason.PROCESSING_FAILURE})


class DicomPartError(RadStreamError):
    """One instance could not be accepted; ``reason`` goes into FailedSOPSequence (a DIMSE status alike)."""

    status_code = 400
    error = "invalid_dicom"

    def __init__(
        self,
        reason: FailureReason,
        detail: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


def describe(exc: BaseException) -> str:
    """Where an unexpected exception was raised, without its message: ``ValueError at
    worker/results/seg.py:158 in build_seg``. Messages from DICOM libraries quote element values (patient
    names, IDs, birth dates), which must not reach logs, telemetry, the status table or an execution's
    history."""
    stack = traceback.extract_tb(exc.__traceback__)
    if not stack:
        return type(exc).__name__
    last = stack[-1]
    parts = Path(last.filename).parts
    if "site-packages" in parts:  # a library: its package path
        parts = parts[parts.index("site-packages") + 1 :]
    where = "/".join(parts[-3:])
    return f"{type(exc).__name__} at {where}:{last.lineno} in {last.name}"


def frames(exc: BaseException) -> str:
    """The traceback's frames (files, lines, functions, source lines), without the exception's message."""
    return "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
