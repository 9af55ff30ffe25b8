"""WADO-RS helpers: content negotiation and multipart framing of stored instances and whole studies."""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import Message

import pydicom

from radstream import keys, manifest
from radstream.aws.s3 import TRANSFER_SYNTAX_METADATA_KEY, ObjectStore
from radstream.errors import NotAcceptable, NotFound

MULTIPART = "multipart"
SINGLE = "single"


def key_for(tenant: str, study: str, series: str, instance: str) -> str:
    try:
        return keys.instance_key(tenant, study, series, instance)
    except ValueError as exc:
        raise NotFound(str(exc)) from exc


@dataclass(frozen=True)
class Acceptable:
    """One media range of an Accept header that this server can produce."""

    media: str  # MULTIPART or SINGLE
    transfer_syntax: str | None  # None: any (the parameter absent, or "*")


def _quality(msg: Message) -> float:
    raw = msg.get_param("q")
    try:
        return float(raw) if isinstance(raw, str) else 1.0
    except ValueError:
        return 0.0


def acceptable(accept: str | None) -> list[Acceptable]:
    """What the Accept header allows that we can produce, most preferred first (q-values, then order;
    q=0 means "not this", RFC 9110 12.4.2). No header: multipart/related."""
    if not accept:
        return [Acceptable(MULTIPART, None)]
    ranked: list[tuple[float, int, Acceptable]] = []
    for position, raw in enumerate(accept.split(",")):
        msg = Message()
        msg["content-type"] = raw.strip()
        quality = _quality(msg)
        if quality <= 0:
            continue
        media = msg.get_content_type()
        syntax = msg.get_param("transfer-syntax")
        transfer_syntax = syntax if isinstance(syntax, str) and syntax != "*" else None
        if media == "multipart/related":
            inner = msg.get_param("type")
            if isinstance(inner, str) and inner.lower() != "application/dicom":
                continue
            kind = MULTIPART
        elif media in ("*/*", "multipart/*"):
            kind = MULTIPART
        elif media in ("application/dicom", "application/*"):
            kind = SINGLE
        else:
            continue
        ranked.append((-quality, position, Acceptable(kind, transfer_syntax)))
    return [choice for _, _, choice in sorted(ranked, key=lambda r: (r[0], r[1]))]


def not_acceptable(accept: str | None) -> NotAcceptable:
    return NotAcceptable(
        f'cannot produce any of {accept!r}; ask for multipart/related; type="application/dicom" or '
        "application/dicom, without a transfer-syntax parameter or with the stored one (instances are "
        "returned as stored, never transcoded)"
    )


async def negotiate(accept: str | None, stored_syntax: Callable[[], Awaitable[str | None]]) -> Acceptable:
    """The first acceptable choice we can serve: instances are returned as stored, so a requested transfer
    syntax must be the stored one (read only when a choice names one); 406 (PS3.18 8.7.3) otherwise."""
    stored: str | None = None
    looked = False
    for choice in acceptable(accept):
        if choice.transfer_syntax is None:
            return choice
        if not looked:
            stored, looked = await stored_syntax(), True
        if stored is not None and choice.transfer_syntax == stored:
            return choice
    raise not_acceptable(accept)


def part_content_type(transfer_syntax: str | None) -> str:
    """``application/dicom`` labelled with the syntax the bytes are in: without the parameter a client must
    assume Explicit VR Little Endian (PS3.18 8.7.3.5.2), which a compressed instance is not."""
    if transfer_syntax is None:
        return "application/dicom"
    return f"application/dicom; transfer-syntax={transfer_syntax}"


async def multipart(
    chunks: AsyncIterator[bytes], boundary: str, content_type: str = "application/dicom"
) -> AsyncIterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    async for chunk in chunks:
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def transfer_syntax_of(head: bytes) -> str | None:
    """The Transfer Syntax UID in the File Meta at the start of a Part 10 stream (None when unreadable)."""
    try:
        meta = pydicom.dcmread(io.BytesIO(head), specific_tags=["SOPInstanceUID"]).file_meta
    except Exception:  # not readable as Part 10: no transfer syntax can be promised
        return None
    syntax = getattr(meta, "TransferSyntaxUID", None)
    return str(syntax) if syntax else None


@dataclass
class OpenInstance:
    """A stored instance being read: its size, its transfer syntax, and its bytes (``chunks``). ``close``
    releases the read when the bytes will not be sent (the response is refused after all)."""

    size: int
    transfer_syntax: str | None
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]


async def open_instance(images: ObjectStore, key: str) -> OpenInstance:
    """One GET: the syntax comes from the object's metadata (written by STOW-RS) or, for objects stored
    without it, from the File Meta in the first chunk. NotFound when missing."""
    size, metadata, body = await images.open_object(key)
    assert isinstance(body, AsyncGenerator)
    first = await anext(body, b"")  # started, so that closing it releases the connection
    syntax = metadata.get(TRANSFER_SYNTAX_METADATA_KEY) or transfer_syntax_of(first)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in body:
                yield chunk
        finally:
            await body.aclose()

    return OpenInstance(size, syntax, chunks(), body.aclose)


async def recorded_instances(images: ObjectStore, tenant: str, study: str) -> list[manifest.ManifestInstance]:
    """The instances of a study that STOW requests acknowledged: those its manifests list, in the order
    they were received. Objects a failed request left (see gateway/dicomweb/stow.py) are not among them."""
    try:
        return await manifest.recorded(images, tenant, study)
    except ValueError as exc:  # not a valid tenant or study UID
        raise NotFound(str(exc)) from exc


async def study_multipart(
    images: ObjectStore, instances: list[manifest.ManifestInstance], boundary: str
) -> AsyncIterator[bytes]:
    """Every instance as one part of a multipart/related body, labelled with its transfer syntax, read one
    at a time (memory stays flat)."""
    for index, instance in enumerate(instances):
        opening = "" if index == 0 else "\r\n"
        part_type = part_content_type(instance.transfer_syntax_uid)
        yield f"{opening}--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        _, chunks = await images.open_stream(instance.key)
        async for chunk in chunks:
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()
