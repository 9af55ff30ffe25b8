"""The gateway's multipart parser interface on top of python-multipart: the alternative that was measured.

``LibraryMultipartParser`` has the interface of :class:`gateway.dicomweb.multipart.MultipartParser`
(``feed(chunk)`` returning :class:`PartStart` / :class:`PartData` / :class:`PartEnd` events,
``parts_started``, ``complete``, ``in_part``, :class:`MultipartError`) and lets python-multipart's
streaming ``MultipartParser`` (0.0.34) find the delimiters and split the part headers. The gateway keeps
its own parser (docs/decisions.md, "The multipart/related parser"); this adapter stays for
``tests/gateway/test_multipart.py`` (which runs every parser test against both and lists where they
differ) and ``loadtest.bench_multipart``. python-multipart is a development dependency only.

python-multipart parses multipart/form-data: it neither skips a preamble nor accepts transport padding
after the first delimiter, so this adapter finds the first delimiter line itself, as the gateway's parser
does, and hands the library a canonical one. The library refuses folded header lines, header names that
are not HTTP tokens and a bare CR in a value, keeps a line that starts with the delimiter but goes on with
other characters as part data, and ends a part only when the CRLF or "--" after its delimiter arrives.
"""

from __future__ import annotations

from enum import Enum, auto

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser as _Library

from gateway.dicomweb.multipart import (
    MAX_BOUNDARY_LENGTH,
    MAX_PART_HEADER_BYTES,
    Event,
    MultipartError,
    PartData,
    PartEnd,
    PartStart,
)

# Header bytes the library does not pass to the callbacks: ": " and CRLF, at least.
_HEADER_LINE_OVERHEAD = 4


class _State(Enum):
    PREAMBLE = auto()  # before the first delimiter (the adapter's own scan)
    FIRST_LINE = auto()  # after the first delimiter, before its CRLF (the adapter's own scan)
    HEADERS = auto()
    BODY = auto()
    DELIMITER = auto()  # after a part's end, before the next part's headers
    EPILOGUE = auto()


def _translate(exc: MultipartParseError) -> MultipartError:
    message = str(exc)
    if message.startswith(("Maximum header size", "Maximum header count")):
        return MultipartError("part headers exceed 16 KiB")
    if "boundary padding" in message:
        return MultipartError("unexpected characters after the boundary delimiter")
    return MultipartError(f"malformed part header or delimiter: {message}")


class LibraryMultipartParser:
    """Incremental parser; call :meth:`feed` for each chunk."""

    def __init__(self, boundary: str) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_LENGTH:
            raise MultipartError(f"boundary must be 1-{MAX_BOUNDARY_LENGTH} characters")
        self._boundary = boundary.encode("latin-1")
        self._delimiter = b"\r\n--" + self._boundary
        self._head = bytearray(b"\r\n")  # as in the gateway's parser: a first delimiter may start the body
        self._state = _State.PREAMBLE
        self._events: list[Event] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self.parts_started = 0
        self._library = _Library(
            self._boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=MAX_PART_HEADER_BYTES // _HEADER_LINE_OVERHEAD,
            max_header_size=MAX_PART_HEADER_BYTES,
        )

    @property
    def complete(self) -> bool:
        """True once the closing delimiter was seen."""
        return self._state is _State.EPILOGUE

    @property
    def in_part(self) -> bool:
        return self._state in (_State.HEADERS, _State.BODY)

    def feed(self, chunk: bytes) -> list[Event]:
        if self._state is _State.EPILOGUE:
            return []
        if self._state in (_State.PREAMBLE, _State.FIRST_LINE):
            data = self._first_delimiter(chunk)
            if data is None:
                return []
        else:
            data = chunk
        self._events = events = []
        try:
            self._library.write(data)
        except MultipartParseError as exc:
            raise _translate(exc) from exc
        return events

    def _first_delimiter(self, chunk: bytes) -> bytes | None:
        """Skip the preamble and the first delimiter line; the bytes for the library once it is passed."""
        buf = self._head
        buf += chunk
        if self._state is _State.PREAMBLE:
            idx = buf.find(self._delimiter)
            if idx < 0:
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return None
            del buf[: idx + len(self._delimiter)]
            self._state = _State.FIRST_LINE
        if len(buf) < 2:
            return None
        if buf[:2] == b"--":
            self._state = _State.EPILOGUE
            return None
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > 1024:
                raise MultipartError("boundary line is not terminated by CRLF")
            return None
        if buf[:end].strip(b" \t"):
            raise MultipartError("unexpected characters after the boundary delimiter")
        data = b"--" + self._boundary + b"\r\n" + bytes(buf[end + 2 :])
        self._head = bytearray()
        self._state = _State.DELIMITER
        return data

    # --- python-multipart callbacks ---

    def _on_part_begin(self) -> None:
        self._state = _State.HEADERS
        self._headers = {}
        self._header_bytes = 0

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise MultipartError("part headers exceed 16 KiB")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._count_header_bytes(_HEADER_LINE_OVERHEAD)
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._state = _State.BODY
        self.parts_started += 1
        self._events.append(PartStart(self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(PartData(data[start:end]))

    def _on_part_end(self) -> None:
        self._state = _State.DELIMITER
        self._events.append(PartEnd())

    def _on_end(self) -> None:
        self._state = _State.EPILOGUE
