"""The streaming multipart/related parser, fed in every chunking.

Most tests run twice: against the gateway's parser and against python-multipart behind the same
interface (``loadtest/multipart_library.py``, the alternative measured in docs/decisions.md).
``test_where_the_two_parsers_differ`` lists every difference.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from gateway.dicomweb.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart

Parser = Callable[[str], Any]


@pytest.fixture(params=["hand-written", "python-multipart"])
def parser_class(request: pytest.FixtureRequest) -> Parser:
    if request.param == "hand-written":
        return MultipartParser
    from loadtest.multipart_library import LibraryMultipartParser

    return LibraryMultipartParser


def body(parts: list[bytes], boundary: str, *, headers: bool = True, preamble: bytes = b"") -> bytes:
    out = preamble
    for part in parts:
        out += f"\r\n--{boundary}\r\n".encode() if out else f"--{boundary}\r\n".encode()
        if headers:
            out += b"Content-Type: application/dicom\r\nContent-Length: %d\r\n" % len(part)
        out += b"\r\n" + part
    out += f"\r\n--{boundary}--\r\nepilogue ignored".encode()
    return out


def parse(cls: Parser, data: bytes, boundary: str, chunk: int) -> tuple[list[dict[str, str]], list[bytes], bool]:
    parser = cls(boundary)
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
def test_parts_survive_any_chunking(parser_class: Parser, boundary: str, chunk: int, with_headers: bool) -> None:
    data = body(PAYLOADS, boundary, headers=with_headers, preamble=b"preamble text")
    headers, parts, complete = parse(parser_class, data, boundary, chunk)
    assert parts == PAYLOADS
    assert complete
    if with_headers:
        assert all(h["content-type"] == "application/dicom" for h in headers)
    else:
        assert headers == [{}] * len(PAYLOADS)


def test_random_payloads_with_boundary_lookalikes(parser_class: Parser) -> None:
    rng = random.Random(7)
    boundary = "abc123"
    payloads = [bytes(rng.choice(b"\r\n-abc123") for _ in range(rng.randint(0, 3000))) for _ in range(20)]
    payloads = [p.replace(b"\r\n--abc123", b"\r\n--abc12X") for p in payloads]
    data = body(payloads, boundary)
    for chunk in (1, 3, 5, 11, 100):
        _, parts, complete = parse(parser_class, data, boundary, chunk)
        assert parts == payloads and complete


def test_truncated_body_is_not_complete(parser_class: Parser) -> None:
    data = body([b"x" * 100, b"y" * 100], "B")
    parser = parser_class("B")
    events = parser.feed(data[: len(data) - 60])
    assert sum(isinstance(e, PartEnd) for e in events) == 1
    assert parser.in_part and not parser.complete


def test_bad_boundary_line_raises(parser_class: Parser) -> None:
    parser = parser_class("B")
    with pytest.raises(MultipartError, match="after the boundary"):
        parser.feed(b"--Bxyz\r\n\r\nhello")


def test_oversized_headers_raise(parser_class: Parser) -> None:
    parser = parser_class("B")
    with pytest.raises(MultipartError, match="16 KiB"):
        parser.feed(b"--B\r\n" + b"X-A: " + b"a" * 20000)


@pytest.mark.parametrize("boundary", ["", "z" * 201])
def test_boundary_length_is_checked(parser_class: Parser, boundary: str) -> None:
    with pytest.raises(MultipartError):
        parser_class(boundary)


def test_folded_part_headers_are_unfolded() -> None:
    data = (
        b"--XbndX\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location:\r\n\tinstance-1\r\n\r\nDATA\r\n--XbndX--\r\n"
    )
    headers, parts, complete = parse(MultipartParser, data, "XbndX", 7)
    assert headers == [
        {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "content-location": "instance-1"}
    ]
    assert parts == [b"DATA"] and complete


@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20])
def test_the_header_limit_does_not_depend_on_the_chunking(parser_class: Parser, chunk: int) -> None:
    line = b"X-Long: " + b"v" * 1000 + b"\r\n"
    within = b"--B\r\n" + line * 15 + b"\r\nDATA\r\n--B--"
    assert parse(parser_class, within, "B", chunk)[1:] == ([b"DATA"], True)
    beyond = b"--B\r\n" + line * 17 + b"\r\nDATA\r\n--B--"
    with pytest.raises(MultipartError, match="16 KiB"):
        parse(parser_class, beyond, "B", chunk)


def outcome(cls: Parser, data: bytes) -> tuple[Any, ...]:
    """("error",), or the (headers, data) of every part that ended, and whether the body was complete."""
    try:
        headers, parts, complete = parse(cls, data, "B", 3)
    except MultipartError:
        return ("error",)
    return tuple(zip(headers, parts, strict=False)), complete


ERROR = ("error",)


@pytest.mark.parametrize(
    ("data", "hand_written", "python_multipart"),
    [
        pytest.param(
            b"--B\r\nA: x\r\n y\r\n\r\nD\r\n--B--", ((({"a": "x y"}, b"D"),), True), ERROR, id="folded-header"
        ),
        pytest.param(b"--B\r\nA : x\r\n\r\nD\r\n--B--", ((({"a": "x"}, b"D"),), True), ERROR, id="space-before-colon"),
        pytest.param(
            b"--B\r\nA(b): x\r\n\r\nD\r\n--B--", ((({"a(b)": "x"}, b"D"),), True), ERROR, id="name-not-a-token"
        ),
        pytest.param(b"--B\r\n: x\r\n\r\nD\r\n--B--", ((({"": "x"}, b"D"),), True), ERROR, id="empty-name"),
        pytest.param(
            b"--B\r\nA: 1\r2\r\n\r\nD\r\n--B--", ((({"a": "1\r2"}, b"D"),), True), ERROR, id="bare-cr-in-value"
        ),
        pytest.param(
            b"--B\r\n\r\nD\r\n--Bxyz\r\n\r\nE\r\n--B--",
            ERROR,
            ((({}, b"D\r\n--Bxyz\r\n\r\nE"),), True),
            id="delimiter-then-other-characters-in-a-part",
        ),
        pytest.param(
            b"--B\r\n\r\nD\r\n--B-x\r\n--B--",
            ERROR,
            ((({}, b"D\r\n--B-x"),), True),
            id="delimiter-then-one-hyphen-in-a-part",
        ),
        pytest.param(
            b"--B\r\n\r\nD\r\n--B", ((({}, b"D"),), False), ((), False), id="body-ends-right-after-a-delimiter"
        ),
    ],
)
def test_where_the_two_parsers_differ(
    parser_class: Parser, data: bytes, hand_written: tuple[Any, ...], python_multipart: tuple[Any, ...]
) -> None:
    """The hand-written parser reads RFC 5322 header syntax loosely (folding, any name) and refuses a line
    that starts with the delimiter but is not one; python-multipart refuses what is not an HTTP token
    header and keeps such a line as part data. It ends a part only once the CRLF or "--" after the
    delimiter has arrived; the hand-written parser ends it at the delimiter."""
    expected = hand_written if parser_class is MultipartParser else python_multipart
    assert outcome(parser_class, data) == expected
