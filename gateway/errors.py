"""One handler renders every RadStreamError as ``{"error", "detail"}``; routes document theirs."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from radstream.errors import RadStreamError

_DESCRIPTIONS = {
    400: "Bad request: the body or a parameter is not understood",
    401: "Missing or unknown API key (Authorization: Bearer <key>)",
    404: "No such study, series or instance for this tenant",
    406: "None of the media types in Accept can be produced",
    409: "No instance stored: every part conflicts with what is stored or with the request",
    413: "The request body is larger than the configured limit",
    415: 'Unsupported media type: send multipart/related; type="application/dicom"',
    422: "A path or query parameter is invalid",
    503: "Storage is unavailable or the gateway is at capacity; retry after Retry-After seconds",
}


class ErrorBody(BaseModel):
    error: str
    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error codes a route can return."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        if code == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[code] = entry
    return out


async def _radstream_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadStreamError)
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": exc.error, "detail": exc.detail},
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse(status_code=422, content={"error": "invalid_parameter", "detail": detail})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RadStreamError, _radstream_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
