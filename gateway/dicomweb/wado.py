"""WADO-RS helpers: content negotiation and multipart framing of stored instances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import Message

from radstream import keys
from radstream.errors import NotAcceptable, NotFound

MULTIPART = "multipart"
SINGLE = "single"


def key_for(tenant: str, study: str, series: str, instance: str) -> str:
    try:
        return keys.instance_key(tenant, study, series, instance)
    except ValueError as exc:
        raise NotFound(str(exc)) from exc


def negotiate(accept: str | None) -> str:
    """Pick multipart/related (the default) or a bare application/dicom from the Accept header."""
    if not accept:
        return MULTIPART
    for raw in accept.split(","):
        msg = Message()
        msg["content-type"] = raw.strip()
        media = msg.get_content_type()
        if media == "multipart/related":
            inner = msg.get_param("type")
            if not isinstance(inner, str) or inner.lower() == "application/dicom":
                return MULTIPART
        elif media == "application/dicom":
            return SINGLE
        elif media in ("*/*", "multipart/*", "application/*"):
            return MULTIPART
    raise NotAcceptable(
        f'cannot produce any of {accept!r}; ask for multipart/related; type="application/dicom" or application/dicom'
    )


async def multipart(chunks: AsyncIterator[bytes], boundary: str) -> AsyncIterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    async for chunk in chunks:
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()
