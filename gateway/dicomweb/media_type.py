"""The STOW-RS request's media type (PS3.18 10.5.1.1): multipart/related; type="application/dicom"."""

from __future__ import annotations

from email.message import Message

from radstream.errors import BadRequest, UnsupportedMediaType
from radstream.ingest.instance import DICOM_MEDIA_TYPE


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
