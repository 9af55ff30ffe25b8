"""Source images and model outputs for the results tests.

Source images are generated here with pydicom: a CT series with full patient
geometry and a DX projection image without a frame of reference, both in one
study whose patient has a name, ID and birth date.
"""

import json
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    generate_uid,
)

from loadtest.synthetic import set_grayscale_pixels
from worker.formats.types import InstanceOutput

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042"
PATIENT_BIRTH_DATE = "19610407"
ACCESSION_NUMBER = "ACC-7781"
MODEL_NAME = "lesion-net"
MODEL_VERSION = "3.1.0"
THRESHOLD = 0.5


def _base(study_uid: str, series_uid: str, sop_class_uid: str, modality: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260301"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = ACCESSION_NUMBER
    ds.ReferringPhysicianName = "Smith^John"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.Manufacturer = "Scanner Co"
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY"]
    return ds


def make_ct_series(study_uid: str, slices: int = 3, size: int = 64) -> list[Dataset]:
    """CT slices of one series, 2.5 mm apart, with full patient geometry."""
    series_uid, frame_uid = generate_uid(), generate_uid()
    images = []
    for index in range(slices):
        ds = _base(study_uid, series_uid, CTImageStorage, "CT", index + 1)
        ds.SeriesNumber = 2
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [-80.0, -80.0, -10.0 + 2.5 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [2.5, 2.5]
        ds.SliceThickness = 2.5
        ds.SliceLocation = -10.0 + 2.5 * index
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        set_grayscale_pixels(ds, np.full((size, size), 1024 + index, dtype=np.uint16), bits_stored=12)
        images.append(ds)
    return images


def make_cr(study_uid: str, rows: int = 70, columns: int = 50) -> Dataset:
    """A CR projection image: no frame of reference, no patient position."""
    ds = _base(study_uid, generate_uid(), ComputedRadiographyImageStorage, "CR", 1)
    ds.SeriesNumber = 4
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    set_grayscale_pixels(ds, np.zeros((rows, columns), dtype=np.uint16), bits_stored=12)
    return ds


def make_dx(study_uid: str, rows: int = 80, columns: int = 60) -> Dataset:
    """A DX projection image: no frame of reference, no patient position."""
    ds = _base(study_uid, generate_uid(), DigitalXRayImageStorageForPresentation, "DX", 1)
    ds.SeriesNumber = 3
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PatientOrientation = ["A", "F"]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    set_grayscale_pixels(ds, np.zeros((rows, columns), dtype=np.uint16), bits_stored=12)
    return ds


def blob_heatmap(centre_row: int, centre_col: int, size: int = 32, sigma: float = 3.0) -> npt.NDArray[np.float32]:
    """A float32 Gaussian heatmap peaking at 0.95 on the centre; >= 0.5 within about 3.4 sigma/3."""
    rr, cc = np.mgrid[0:size, 0:size]
    squared = (rr - centre_row) ** 2 + (cc - centre_col) ** 2
    heatmap: npt.NDArray[np.float32] = (0.95 * np.exp(-squared / (2 * sigma**2))).astype(np.float32)
    return heatmap


def make_output(
    header: Dataset,
    probability: float,
    heatmap: npt.NDArray[np.float32] | None = None,
    model_version: str = MODEL_VERSION,
) -> InstanceOutput:
    heatmap = blob_heatmap(16, 16) if heatmap is None else heatmap
    if heatmap.size:
        peak_row, peak_col = (int(i) for i in np.unravel_index(int(np.argmax(heatmap)), heatmap.shape))
        scale_row, scale_col = int(header.Rows) / heatmap.shape[0], int(header.Columns) / heatmap.shape[1]
    else:  # no heatmap: peak at the image centre
        peak_row, peak_col, scale_row, scale_col = 0, 0, int(header.Rows), int(header.Columns)
    return InstanceOutput(
        sop_instance_uid=str(header.SOPInstanceUID),
        model_name=MODEL_NAME,
        model_version=model_version,
        probability=probability,
        label="lesion" if probability >= THRESHOLD else "no lesion",
        heatmap=heatmap,
        peak_row=(float(peak_row) + 0.5) * scale_row - 0.5,
        peak_col=(float(peak_col) + 0.5) * scale_col - 0.5,
        timings_ms={"preprocess": 3.5, "infer": 11.25},
    )


@dataclass(frozen=True)
class Study:
    ct: list[Dataset]
    dx: Dataset
    outputs: list[InstanceOutput]

    @property
    def headers(self) -> list[Dataset]:
        return [*self.ct, self.dx]


@dataclass(frozen=True)
class Verification:
    errors: list[str]
    warnings: list[str]
    output: str


def dicom_json(dataset: Dataset) -> str:
    """The dataset as canonical DICOM JSON.

    Dates and times that highdicom stores as ``DA``/``TM``/``DT`` objects are
    rendered as their DICOM strings, so a dataset and its decoded bytes compare
    equal exactly when every element value is the same.
    """
    return json.dumps(dataset.to_json_dict(), default=str, sort_keys=True)
