"""DICOM helpers over pydicom: the only module of the core that imports it.

``read_header`` parses a Part 10 stream up to (not including) the pixel data and returns the few
attributes the pipeline routes on, or raises :class:`DicomPartError` carrying the PS3.18 reason code.
"""

from __future__ import annotations

import io
import logging
import warnings
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, cast

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from radstream.errors import DicomPartError, FailureReason, WarningReason
from radstream.keys import is_uid

KNOWN_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)


def read_values_unvalidated() -> None:
    """Process-wide: pydicom does not validate element values when it reads. The gateway stores what it
    was sent, and the results builders handle what does not parse; validating on read would only make
    pydicom describe (quote) the invalid values. Called once by each service at start."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def keep_values_out_of_logs() -> None:
    """Process-wide: keep element values out of the logs. pydicom reports an invalid value by quoting it
    ("Invalid value for VR DA: '1961-04-07'") through its logger and Python warnings, highdicom a doubtful
    patient name through its logger, and a birth date or a patient name would reach the logs that way.
    Both loggers are silenced and their warnings ignored: a failure they would describe surfaces as an
    exception, which our code reports by type and place (radstream.errors.describe)."""
    for name in ("pydicom", "highdicom"):
        library_log = logging.getLogger(name)
        library_log.setLevel(logging.CRITICAL + 1)
        library_log.propagate = False
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)(\.|$)")


@dataclass(frozen=True)
class InstanceHeader:
    """What the pipeline needs to know about one instance; no PHI."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    warnings: tuple[tuple[WarningReason, str], ...] = field(default=())
    data_set_offset: int | None = None  # where the data set starts, after the preamble and File Meta


def _uid(ds: pydicom.Dataset, keyword: str, cls: str | None, inst: str | None) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise DicomPartError(
            FailureReason.MISSING_ATTRIBUTE,
            f"{keyword} is missing",
            sop_class_uid=cls,
            sop_instance_uid=inst,
        )
    text = str(value).strip()
    if not is_uid(text):
        raise DicomPartError(
            FailureReason.INVALID_ATTRIBUTE,
            f"{keyword} is not a valid UID: {text[:40]!r}",
            sop_class_uid=cls,
            sop_instance_uid=inst,
        )
    return text


def starts_with_file_meta(head: bytes) -> bool:
    """True for a Part 10 stream written without the 128-byte preamble and 'DICM' (as some clients do):
    it starts directly with a File Meta Information element, group 0002 in explicit VR little endian."""
    return len(head) >= 6 and head[:2] == b"\x02\x00" and head[4:6].isalpha()


def _starts_with_file_meta(stream: BinaryIO) -> bool:
    start = stream.tell()
    head = stream.read(6)
    stream.seek(start)
    return starts_with_file_meta(head)


# Everything read_header needs is in groups 0002 to 0020, which come first; a legitimate data set holds
# kilobytes there. Parsing stops at the first element after group 0020 and never reads more than this.
HEADER_LIMIT_BYTES = 16 * 1024 * 1024
# A Deflated Explicit VR Little Endian data set may inflate to at most this (a deflate bomb of 256 KiB
# inflates to 256 MiB); it is measured as a stream, never held whole.
MAX_INFLATED_BYTES = 512 * 1024 * 1024
_INFLATE_CHUNK_BYTES = 1 << 16


class _HeaderTooLarge(Exception):
    pass


class _Capped:
    """A read-only view of ``stream`` that refuses to read past ``limit`` bytes from where it started."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._end = stream.tell() + limit

    def read(self, size: int = -1) -> bytes:
        left = self._end - self._stream.tell()
        if size < 0 or size > left:
            data = self._stream.read(left + 1 if size < 0 else size)
            if len(data) > left:
                raise _HeaderTooLarge
            return data
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _beyond_routing_groups(tag: int, vr: str | None, length: int) -> bool:
    return tag > 0x0020FFFF


def _inflated_prefix(stream: BinaryIO, limit: int) -> bytes:
    """The first ``limit`` bytes of the deflated data set that follows the File Meta, after checking, as a
    stream, that the whole inflates to no more than :data:`MAX_INFLATED_BYTES`."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    prefix = bytearray()
    total = 0
    while not inflater.eof and (chunk := stream.read(_INFLATE_CHUNK_BYTES)):
        while chunk and not inflater.eof:  # after the end of the deflate stream, bytes are left unread
            out = inflater.decompress(chunk, _INFLATE_CHUNK_BYTES)
            total += len(out)
            if total > MAX_INFLATED_BYTES:
                raise DicomPartError(
                    FailureReason.CANNOT_UNDERSTAND,
                    f"the deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes",
                )
            if len(prefix) < limit:
                prefix += out[: limit - len(prefix)]
            chunk = inflater.unconsumed_tail
    return bytes(prefix)


def _read_routing_attributes(stream: BinaryIO) -> tuple[Dataset, int | None]:
    """The data set up to group 0020 with its File Meta, reading at most HEADER_LIMIT_BYTES of the header
    (and, for a deflated data set, inflating it as a stream under MAX_INFLATED_BYTES)."""
    start = stream.tell()
    force = _starts_with_file_meta(stream)
    capped = cast(BinaryIO, _Capped(stream, HEADER_LIMIT_BYTES))
    read_preamble(capped, force)
    meta = _read_file_meta_info(capped)
    offset = stream.tell() - start
    syntax = meta.get("TransferSyntaxUID")
    if syntax == DeflatedExplicitVRLittleEndian:
        inflated = io.BytesIO(_inflated_prefix(stream, HEADER_LIMIT_BYTES))
        ds = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True, stop_when=_beyond_routing_groups)
        if ds and inflated.tell() >= HEADER_LIMIT_BYTES and inflated.tell() == len(inflated.getbuffer()):
            raise _HeaderTooLarge
    elif syntax in KNOWN_TRANSFER_SYNTAXES:  # the data set follows the File Meta just read
        uid = UID(str(syntax))
        ds = read_dataset(capped, uid.is_implicit_VR, uid.is_little_endian, stop_when=_beyond_routing_groups)
    else:  # no syntax, or one pydicom does not know: pydicom's own guess at the encoding, from the start
        stream.seek(start)
        partial = read_partial(cast(BinaryIO, _Capped(stream, HEADER_LIMIT_BYTES)), _beyond_routing_groups, force=force)
        return partial, None
    ds.file_meta = meta
    return ds, offset


def read_header(stream: BinaryIO) -> InstanceHeader:
    """Parse the header of a DICOM Part 10 stream, up to group 0020 (never the pixel data).

    Raises :class:`DicomPartError` with the failure reason for anything the gateway must refuse.
    """
    try:
        ds, data_set_offset = _read_routing_attributes(stream)
    except DicomPartError:
        raise
    except _HeaderTooLarge as exc:
        raise DicomPartError(
            FailureReason.CANNOT_UNDERSTAND,
            f"the DICOM header up to its Series Instance UID is larger than {HEADER_LIMIT_BYTES} bytes",
        ) from exc
    except InvalidDicomError as exc:
        raise DicomPartError(FailureReason.CANNOT_UNDERSTAND, f"not a DICOM Part 10 stream: {exc}"[:200]) from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DicomPartError(FailureReason.CANNOT_UNDERSTAND, f"DICOM header could not be parsed: {exc}"[:200]) from exc

    meta = ds.file_meta
    raw_cls = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "") or None
    raw_inst = str(ds.get("SOPInstanceUID", "") or meta.get("MediaStorageSOPInstanceUID", "") or "") or None
    sop_class = _uid(ds, "SOPClassUID", raw_cls, raw_inst)
    sop_instance = _uid(ds, "SOPInstanceUID", sop_class, raw_inst)
    study = _uid(ds, "StudyInstanceUID", sop_class, sop_instance)
    series = _uid(ds, "SeriesInstanceUID", sop_class, sop_instance)

    ts = str(meta.get("TransferSyntaxUID", "") or "").strip()
    if not ts:
        raise DicomPartError(
            FailureReason.MISSING_ATTRIBUTE,
            "TransferSyntaxUID (0002,0010) is missing from the File Meta Information",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
    if ts not in KNOWN_TRANSFER_SYNTAXES:
        raise DicomPartError(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {ts} is not supported",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
    meta_inst = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    if meta_inst and meta_inst != sop_instance:
        raise DicomPartError(
            FailureReason.INVALID_ATTRIBUTE,
            "MediaStorageSOPInstanceUID does not match SOPInstanceUID",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
        )
    warnings: list[tuple[WarningReason, str]] = []
    meta_cls = str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
    if meta_cls and meta_cls != sop_class:
        warnings.append(
            (
                WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                "MediaStorageSOPClassUID differs from SOPClassUID",
            )
        )
    modality = ds.get("Modality")
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=ts,
        modality=str(modality) if modality else None,
        warnings=tuple(warnings),
        data_set_offset=data_set_offset,
    )
