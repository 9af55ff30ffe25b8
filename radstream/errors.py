"""The one error base of RadStream: every domain error carries its HTTP status and a stable code."""

from __future__ import annotations

import traceback
from pathlib import Path


class RadStreamError(Exception):
    """Base of every error RadStream raises on purpose.

    ``status_code`` is what the gateway answers; ``error`` is a stable machine-readable code.
    """

    status_code: int = 500
    error: str = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if headers is not None:
            self.headers = headers


class BadRequest(RadStreamError):
    status_code = 400
    error = "bad_request"


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


class ServiceBusy(RadStreamError):
    """Every upload slot is taken; the client should retry after Retry-After seconds."""

    status_code = 503
    error = "busy"


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
