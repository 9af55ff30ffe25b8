"""A streaming ``multipart/related`` parser (RFC 2046 / RFC 2387) that never holds a whole part.

Feed it the body chunk by chunk; it returns events: :class:`PartStart` (with the part's own headers,
possibly none), :class:`PartData` (a slice of the part body) and :class:`PartEnd`. Memory stays bounded by
the chunk size plus the delimiter length, whatever the size of the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

MAX_BOUNDARY_LENGTH = 200  # RFC 2046 says 70; real clients send more (Orthanc: 73)
MAX_PART_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    """The body is not a well-formed multipart body for the declared boundary."""


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # lower-cased names


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _State(Enum):
    PREAMBLE = auto()
    BOUNDARY_LINE = auto()
    HEADERS = auto()
    BODY = auto()
    EPILOGUE = auto()


def parse_headers(block: bytes) -> dict[str, str]:
    """A part's header fields, names lower-cased; folded fields (RFC 5322 2.2.3) are unfolded."""
    lines: list[bytes] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()
        else:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


class MultipartParser:
    """Incremental parser; call :meth:`feed` for each chunk, then look at :attr:`complete` and :attr:`in_part`."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
            raise MultipartError(f"boundary must be 1-{MAX_BOUNDARY_LENGTH} characters")
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The first delimiter may start the body without a preceding CRLF: pretend one was there.
        self._buf = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self.parts_started = 0

    @property
    def complete(self) -> bool:
        """True once the closing delimiter was seen."""
        return self._state is _State.EPILOGUE

    @property
    def in_part(self) -> bool:
        return self._state in (_State.HEADERS, _State.BODY)

    def feed(self, chunk: bytes) -> list[Event]:
        if self._state is _State.EPILOGUE:
            return []  # the epilogue is ignored (RFC 2046 5.1.1)
        self._buf += chunk
        events: list[Event] = []
        while True:
            progressed = self._step(events)
            if not progressed:
                return events

    def _step(self, events: list[Event]) -> bool:
        buf = self._buf
        delim = self._delimiter
        if self._state is _State.PREAMBLE:
            idx = buf.find(delim)
            if idx < 0:
                keep = len(delim) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            del buf[: idx + len(delim)]
            self._state = _State.BOUNDARY_LINE
            return True
        if self._state is _State.BOUNDARY_LINE:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _State.EPILOGUE
                buf.clear()
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise MultipartError("boundary line is not terminated by CRLF")
                return False
            if buf[:end].strip(b" \t"):
                raise MultipartError("unexpected characters after the boundary delimiter")
            del buf[: end + 2]
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            if len(buf) < 2:
                return False
            if buf[:2] == b"\r\n":  # a part without headers of its own
                del buf[:2]
                headers: dict[str, str] = {}
            else:
                end = buf.find(b"\r\n\r\n", 0, MAX_PART_HEADER_BYTES + 4)
                if end < 0:
                    if len(buf) >= MAX_PART_HEADER_BYTES + 4:  # whatever the chunking
                        raise MultipartError("part headers exceed 16 KiB")
                    return False
                headers = parse_headers(bytes(buf[:end]))
                del buf[: end + 4]
            self.parts_started += 1
            events.append(PartStart(headers))
            self._state = _State.BODY
            return True
        if self._state is _State.BODY:
            idx = buf.find(delim)
            if idx < 0:
                safe = len(buf) - (len(delim) - 1)
                if safe > 0:
                    events.append(PartData(bytes(buf[:safe])))
                    del buf[:safe]
                return False
            if idx:
                events.append(PartData(bytes(buf[:idx])))
            del buf[: idx + len(delim)]
            events.append(PartEnd())
            self._state = _State.BOUNDARY_LINE
            return True
        return False
