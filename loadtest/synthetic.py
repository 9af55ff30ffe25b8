"""Synthetic DICOM instances for tests, benchmarks and load tests (no real patient data anywhere).

The patient attributes are fixed, recognisable fake values so tests can prove they never leak into
telemetry or logs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

FAKE_PATIENT_NAME = "Synthetic^Phantom^RS"
FAKE_PATIENT_ID = "RS-PHANTOM-0042"
FAKE_BIRTH_DATE = "19010101"


@dataclass(frozen=True)
class StudyUids:
    study: str
    series: str

    @classmethod
    def new(cls) -> StudyUids:
        return cls(study=generate_uid(), series=generate_uid())


def _base(sop_class: str, uids: StudyUids, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.Modality = modality
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = FAKE_BIRTH_DATE
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "RS0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "RadStream synthetic"
    return ds


def set_grayscale_pixels(ds: Dataset, pixels: npt.NDArray[np.integer[Any]], *, bits_stored: int) -> None:
    """Put a 2D integer array into ``ds`` with its Image Pixel module (one MONOCHROME2 sample per pixel);
    rows, columns, bits allocated and signedness come from the array."""
    if pixels.ndim != 2 or pixels.dtype.kind not in "iu":
        raise ValueError(f"expected a 2D integer array, got {pixels.dtype} {pixels.shape}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def ct_slice(
    uids: StudyUids,
    index: int,
    *,
    rows: int = 512,
    cols: int = 512,
    seed: int | None = None,
    frame_of_reference: str | None = None,
) -> Dataset:
    """One CT slice (16-bit, full geometry) of a synthetic phantom."""
    ds = _base(CTImageStorage, uids, "CT")
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = frame_of_reference or generate_uid(entropy_srcs=[uids.series, "for"])
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-250.0, -250.0, float(index) * 2.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [500.0 / rows, 500.0 / cols]
    ds.SliceThickness = 2.5
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    rng = np.random.default_rng(seed if seed is not None else index)
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) ** 2 / (rows * 0.42) ** 2 + (xx - cols / 2) ** 2 / (cols * 0.35) ** 2) <= 1
    pixels = np.where(body, 1064, 24).astype(np.int16) + rng.integers(-20, 20, (rows, cols), dtype=np.int16)
    set_grayscale_pixels(ds, pixels, bits_stored=16)
    return ds


def dx_image(uids: StudyUids, *, rows: int = 1024, cols: int = 1024, seed: int = 0) -> Dataset:
    """A digital radiograph (projection image, no patient geometry)."""
    ds = _base(DigitalXRayImageStorageForPresentation, uids, "DX")
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    rng = np.random.default_rng(seed)
    set_grayscale_pixels(ds, rng.integers(0, 4095, (rows, cols), dtype=np.uint16), bits_stored=12)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def ct_series_bytes(count: int, *, rows: int = 512, cols: int = 512, uids: StudyUids | None = None) -> list[bytes]:
    uids = uids or StudyUids.new()
    frame = generate_uid()
    return [to_bytes(ct_slice(uids, i, rows=rows, cols=cols, frame_of_reference=frame)) for i in range(count)]
