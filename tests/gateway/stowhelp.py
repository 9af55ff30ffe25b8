"""Request helpers for the gateway tests: real HTTP over loopback with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

BOUNDARY = "RadStreamTestBoundary0123456789"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], *, boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def stow(
    url: str,
    headers: dict[str, str],
    parts: list[bytes],
    *,
    study: str | None = None,
    chunked: bool = False,
    content_type: str = CONTENT_TYPE,
    timeout: float = 120,
) -> httpx.Response:
    target = f"{url}/dicomweb/studies" + (f"/{study}" if study else "")
    data = multipart(parts)
    content: Any = chunks(data) if chunked else data
    return httpx.post(target, content=content, headers={**headers, "Content-Type": content_type}, timeout=timeout)


def referenced(body: dict[str, Any]) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = body.get("00081199", {}).get("Value", [])
    return values


def failed(body: dict[str, Any]) -> list[dict[str, Any]]:
    values: list[dict[str, Any]] = body.get("00081198", {}).get("Value", [])
    return values


def reasons(body: dict[str, Any]) -> list[int]:
    return [item["00081197"]["Value"][0] for item in failed(body)]
