"""One STOW-RS part's bytes while it arrives: RAM up to a threshold, then a temporary file; hashed as it
arrives. A Part 10 stream sent without its preamble is stored with it."""

from __future__ import annotations

import hashlib
import tempfile

from radstream.dicom import starts_with_file_meta

PART10_PREAMBLE = b"\x00" * 128 + b"DICM"
PREAMBLE_PROBE_BYTES = 6  # enough to recognise a File Meta element (group 0002) at the start


class Spool:
    """One part's bytes: RAM up to a threshold, then a temporary file; hashed as it arrives."""

    def __init__(self, memory_bytes: int, headers: dict[str, str]) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115 - closed in finally
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.headers = headers
        self._head: bytes | None = b""  # the first bytes, until we know whether a preamble is missing

    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            if len(self._head) < PREAMBLE_PROBE_BYTES:
                return
            data, self._head = self._head, None
            if starts_with_file_meta(data):
                # Part 10 without its 128-byte preamble and "DICM" (dicomweb-client sends this): store the
                # standard file format, so every reader (and WADO-RS clients) can open what we return.
                self._write(PART10_PREAMBLE)
        self._write(data)

    def finish(self) -> None:
        if self._head:  # a part shorter than the probe
            self._write(self._head)
        self._head = None

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)
