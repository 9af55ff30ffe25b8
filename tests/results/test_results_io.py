"""DICOM Part 10 serialisation of the objects we write."""

import pytest
from pydicom.uid import JPEG2000Lossless
from results_sources import THRESHOLD, Study, dicom_json

from worker.results import build_sr, dataset_from_bytes, dataset_to_bytes


def test_bytes_are_a_part10_file_in_explicit_vr_little_endian(study: Study) -> None:
    data = dataset_to_bytes(study.ct[0])
    assert data[128:132] == b"DICM"
    read = dataset_from_bytes(data)
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert read.file_meta.MediaStorageSOPClassUID == study.ct[0].SOPClassUID
    assert read.file_meta.MediaStorageSOPInstanceUID == study.ct[0].SOPInstanceUID
    assert dicom_json(read) == dicom_json(study.ct[0])
    assert read.PixelData == study.ct[0].PixelData


def test_serialising_leaves_the_dataset_unchanged(study: Study) -> None:
    sr = build_sr(study.headers, study.outputs, threshold=THRESHOLD)
    meta_before, json_before = dicom_json(sr.file_meta), dicom_json(sr)
    dataset_to_bytes(sr)
    assert (dicom_json(sr.file_meta), dicom_json(sr)) == (meta_before, json_before)
    assert not hasattr(study.ct[0], "file_meta")
    dataset_to_bytes(study.ct[0])
    assert not hasattr(study.ct[0], "file_meta")


def test_compressed_pixel_data_is_refused(study: Study) -> None:
    source = study.ct[0]
    source.ensure_file_meta()
    source.file_meta.TransferSyntaxUID = JPEG2000Lossless
    with pytest.raises(ValueError, match="compressed pixel data"):
        dataset_to_bytes(source)
