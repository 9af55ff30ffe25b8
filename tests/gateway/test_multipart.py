"""The streaming multipart/related parser, fed in every chunking."""

from __future__ import annotations

import random

import pytest

from gateway.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart


def body(parts: list[bytes], boundary: str, *, headers: bool = True, preamble: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += f"\r\n--{boundary}\r\n".encode() if out else f"--{boundary}\r\n".encode()
        if headers:
            out += b"Content-Type: application/dicom\r\nContent-Length: %d\r\n" % len(part)
        out += b"\r\n" + part
    out += f"\r\n--{boundary}--\r\nepilogue ignored".encode()
    return out


def parse(data: bytes, boundary: str, chunk: int) -> tuple[list[dict[str, str]], list[bytes], bool]:
    parser = MultipartParser(boundary)
    headers: list[dict[str, str]] = []
    parts: list[bytes] = []
    current = b""
    for i in range(0, len(data), chunk):
        for event in parser.feed(data[i : i + chunk]):
            if isinstance(event, PartStart):
                headers.append(event.headers)
                current = b""
            elif isinstance(event, PartData):
                current += event.data
            elif isinstance(event, PartEnd):
                parts.append(current)
    return headers, parts, parser.complete


PAYLOADS = [b"DICM" * 1000, b"", b"\r\n--not-the-boundary\r\n" * 50, bytes(range(256)) * 300]


@pytest.mark.parametrize("boundary", ["b", "x" * 70, "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1", "O" * 73, "q" * 100])
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 20])
@pytest.mark.parametrize("with_headers", [True, False])
def test_parts_survive_any_chunking(boundary: str, chunk: int, with_headers: bool) -> None:
    data = body(PAYLOADS, boundary, headers=with_headers, preamble=b"preamble text")
    headers, parts, complete = parse(data, boundary, chunk)
    assert parts == PAYLOADS
    assert complete
    if with_headers:
        assert all(h["content-type"] == "application/dicom" for h in headers)
    else:
        assert headers == [{}] * len(PAYLOADS)


def test_random_payloads_with_boundary_lookalikes() -> None:
    rng = random.Random(7)
    boundary = "abc123"
    payloads = [bytes(rng.choice(b"\r\n-abc123") for _ in range(rng.randint(0, 3000))) for _ in range(20)]
    payloads = [p.replace(b"\r\n--abc123", b"\r\n--abc12X") for p in payloads]
    data = body(payloads, boundary)
    for chunk in (1, 3, 5, 11, 100):
        _, parts, complete = parse(data, boundary, chunk)
        assert parts == payloads and complete


def test_truncated_body_is_not_complete() -> None:
    data = body([b"x" * 100, b"y" * 100], "B")
    parser = MultipartParser("B")
    events = parser.feed(data[: len(data) - 60])
    assert sum(isinstance(e, PartEnd) for e in events) == 1
    assert parser.in_part and not parser.complete


def test_bad_boundary_line_raises() -> None:
    parser = MultipartParser("B")
    with pytest.raises(MultipartError, match="after the boundary"):
        parser.feed(b"--Bxyz\r\n\r\nhello")


def test_oversized_headers_raise() -> None:
    parser = MultipartParser("B")
    with pytest.raises(MultipartError, match="16 KiB"):
        parser.feed(b"--B\r\n" + b"X-A: " + b"a" * 20000)


@pytest.mark.parametrize("boundary", ["", "z" * 201])
def test_boundary_length_is_checked(boundary: str) -> None:
    with pytest.raises(MultipartError):
        MultipartParser(boundary)


def test_folded_part_headers_are_unfolded() -> None:
    data = (
        b"--XbndX\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location:\r\n\tinstance-1\r\n\r\nDATA\r\n--XbndX--\r\n"
    )
    headers, parts, complete = parse(data, "XbndX", 7)
    assert headers == [
        {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "content-location": "instance-1"}
    ]
    assert parts == [b"DATA"] and complete
