"""One handler renders every RadStreamError as ``{"error", "detail"}``; routes document theirs.

A 5xx is logged with the error's log message (which may name the bucket, table or key that refused); the
client reads only its detail. Every 503 says when to come back (Retry-After)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from radstream.errors import RadStreamError

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 5

_DESCRIPTIONS = {
    400: "Bad request: the body or a parameter is not understood",
    401: "Missing or unknown API key (Authorization: Bearer <key>)",
    404: "No such study, series or instance for this tenant",
    406: "None of the media types in Accept can be produced",
    409: "Conflict: for STOW-RS, no instance stored (every part conflicts with what is stored or with the "
    "request); for an export, nothing to send (no results yet, or no destination configured)",
    413: "The request body is larger than the configured limit",
    415: 'Unsupported media type: send multipart/related; type="application/dicom"',
    500: "The object store or the status table refused the request (permissions, a missing bucket or table): "
    "an operator must look at the gateway's log",
    503: "Storage is unavailable or the gateway is at capacity; retry after Retry-After seconds",
}


class ErrorBody(BaseModel):
    error: str
    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can return, and 500 (storage refused)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 500}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        if code == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[code] = entry
    return out


def _retry_after(request: Request) -> str:
    services = getattr(request.state, "services", None)
    settings = getattr(services, "settings", None)
    return str(getattr(settings, "storage_retry_after_s", DEFAULT_RETRY_AFTER_S))


async def _radstream_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadStreamError)
    if exc.status_code >= 500 and exc.status_code != 503:
        log.error("%s %s: %s: %s", request.method, request.url.path, exc.error, exc)
    headers = dict(exc.headers or {})
    if exc.status_code == 503 and "Retry-After" not in headers:  # every 503 says when to come back
        headers["Retry-After"] = _retry_after(request)
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": exc.error, "detail": exc.detail},
        headers=headers or None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A path or query parameter that is not valid: 400 (PS3.18 uses 400 Bad Request for invalid parameters)."""
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse(status_code=400, content={"error": "invalid_parameter", "detail": detail})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RadStreamError, _radstream_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
