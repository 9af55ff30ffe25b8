"""Serialisation of the DICOM objects we write."""

from io import BytesIO

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian


def dataset_to_bytes(dataset: Dataset) -> bytes:
    """Encode ``dataset`` as a DICOM Part 10 file in Explicit VR Little Endian.

    A fresh File Meta Information group is written (the dataset itself is not
    changed). Raises ``ValueError`` for encapsulated (compressed) pixel data,
    which cannot be re-labelled as Explicit VR Little Endian.
    """
    if "PixelData" in dataset:
        current = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        if current is not None and current.is_compressed:
            raise ValueError(f"dataset has compressed pixel data ({current.name}); decompress it first")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    copy = Dataset(dataset)
    implicit, little = dataset.original_encoding
    copy.set_original_encoding(implicit, little, dataset.original_character_set)  # raw elements are written raw
    copy.file_meta = meta
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, copy, enforce_file_format=True)
    return buffer.getvalue()


def dataset_from_bytes(data: bytes) -> Dataset:
    """Decode a DICOM Part 10 file (the inverse of :func:`dataset_to_bytes`)."""
    return pydicom.dcmread(BytesIO(data))
