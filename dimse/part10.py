"""A C-STORE data set as a DICOM file: C-STORE carries no File Meta, so one is built from the request and
its presentation context (transfer syntax, SOP class and instance, the sender's AE title) and put with the
128-byte preamble and "DICM" in front of the data set's bytes, which are stored as received."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, generate_uid
from pynetdicom.dsutils import encode_file_meta

PREAMBLE = b"\x00" * 128 + b"DICM"
# Derived, not registered: pydicom's root and a fixed name, the same in every process and release.
IMPLEMENTATION_CLASS_UID = str(generate_uid(entropy_srcs=["radstream-dimse-listener"]))
IMPLEMENTATION_VERSION_NAME = "RADSTREAM_010"


@dataclass(frozen=True)
class Part10:
    body: bytes
    sha256: str


def part10(
    dataset: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> Part10:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae.strip():
        meta.SourceApplicationEntityTitle = source_ae.strip()
    body = b"".join((PREAMBLE, encode_file_meta(meta), dataset))
    return Part10(body, hashlib.sha256(body).hexdigest())
