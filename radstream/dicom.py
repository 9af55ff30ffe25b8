"""DICOM helpers over pydicom: the only module of the core that imports it.

``read_header`` parses a Part 10 stream up to (not including) the pixel data and returns the few
attributes the pipeline routes on, or raises :class:`DicomPartError` carrying the PS3.18 reason code.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO

import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.uid import AllTransferSyntaxes

from radstream.keys import is_uid

KNOWN_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)


def quiet_dicom_libraries() -> None:
    """Keep element values out of this process's logs. pydicom reports an invalid value by quoting it
    ("Invalid value for VR DA: '1961-04-07'") through its logger and Python warnings, highdicom a doubtful
    patient name through its logger, and a birth date or a patient name would reach the logs that way.
    Values are not validated when read (the gateway stores what it was sent; the results builders handle
    what does not parse) and both loggers are silenced: a failure they would describe surfaces as an
    exception, which our code reports by type and place (radstream.errors.describe)."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    for name in ("pydicom", "highdicom"):
        library_log = logging.getLogger(name)
        library_log.setLevel(logging.CRITICAL + 1)
        library_log.propagate = False
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)(\.|$)")


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values used in Store Instances Responses (PS3.18 Annex I)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111  # different bytes under a SOP Instance UID already stored
    OUT_OF_RESOURCES = 0xA700
    STUDY_UID_MISMATCH = 0xA900  # the instance's Study Instance UID does not match the request path
    CANNOT_UNDERSTAND = 0xC000  # not a DICOM Part 10 stream, or it could not be parsed
    MISSING_ATTRIBUTE = 0xC001  # a required attribute (SOP Class/Instance, Study/Series UID) is absent
    INVALID_ATTRIBUTE = 0xC002  # a required attribute is present but not a valid UID
    TRUNCATED_PART = 0xC003  # the multipart body ended inside this part
    NOT_APPLICATION_DICOM = 0xC004  # the part's own Content-Type is not application/dicom
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class WarningReason(IntEnum):
    """Warning Reason (0008,1196) values (PS3.18 Annex I)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


# Failures that mean "the request conflicts with what the server accepts" (HTTP 409 when nothing stored).
CONFLICT_REASONS = frozenset(
    {
        FailureReason.DUPLICATE_SOP_INSTANCE,
        FailureReason.STUDY_UID_MISMATCH,
        FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
    }
)
# Failures caused by the server's storage, not by the data (HTTP 503 when nothing stored).
RESOURCE_REASONS = frozenset({FailureReason.OUT_OF_RESOURCES, FailureReason.PROCESSING_FAILURE})


class DicomPartError(Exception):
    """One part could not be accepted; ``reason`` goes into FailedSOPSequence."""

    def __init__(
        self,
        reason: FailureReason,
        detail: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


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


def read_header(stream: BinaryIO) -> InstanceHeader:
    """Parse the header of a DICOM Part 10 stream without reading pixel data.

    Raises :class:`DicomPartError` with the failure reason for anything the gateway must refuse.
    """
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True, force=_starts_with_file_meta(stream))
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
    )
