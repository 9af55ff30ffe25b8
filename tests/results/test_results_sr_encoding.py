"""The SR content tree encoded straight to bytes (worker/results/sr/encoded.py): what pydicom reads back."""

import dataclasses
import struct
from io import BytesIO

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from results_sources import THRESHOLD, Study

from worker.results import build_sr, dataset_from_bytes, dataset_to_bytes
from worker.results.sr.encoded import Item, character_set, raw_sequence


def _pydicom_bytes(items: list[pydicom.Dataset]) -> bytes:
    """The items as pydicom writes them (Explicit VR Little Endian), item by item with defined lengths."""
    out = b""
    for item in items:
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_dataset(buffer, item)
        body = buffer.getvalue()
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
    return out


def test_the_encoded_content_is_byte_for_byte_what_pydicom_writes_for_it(study: Study) -> None:
    """Decode the report's content tree with pydicom, write it again with pydicom's own writer (defined
    lengths, as encoded here): the same bytes. Every value representation of the report is in it."""
    sr = build_sr(study.headers, study.outputs, threshold=THRESHOLD)
    raw = sr.get_item(0x0040A730)
    assert raw.is_raw  # the tree stays encoded until someone reads it
    written = dataset_from_bytes(dataset_to_bytes(sr))
    decoded = list(written.ContentSequence)
    assert len(decoded) == 9  # TID 1500 rows: language, observer (4), procedure, library, measurements
    assert _pydicom_sequences_defined(decoded) == raw.value


def _pydicom_sequences_defined(items: list[pydicom.Dataset]) -> bytes:
    """pydicom writes sequences with undefined lengths; rewrite each nested one with defined lengths."""
    for item in items:
        for element in item:
            if element.VR == "SQ":
                element.value = [pydicom.Dataset(i) for i in element.value]
                nested = _pydicom_sequences_defined(list(element.value))
                element.value = []
                item[element.tag] = pydicom.dataelem.RawDataElement(
                    element.tag, "SQ", len(nested), nested, 0, False, True
                )
        item.set_original_encoding(False, True, item._character_set)
    return _pydicom_bytes(items)


def test_text_is_encoded_in_the_documents_character_set(study: Study) -> None:
    header = study.ct[0]
    header.SpecificCharacterSet = "ISO_IR 192"
    output = dataclasses.replace(study.outputs[0], model_name="détecteur-lésions", model_version="1.0-ü")
    sr = dataset_from_bytes(dataset_to_bytes(build_sr([header], [output], threshold=THRESHOLD)))
    texts = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if "TextValue" in item:
                texts.append(item.TextValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    assert "détecteur-lésions" in texts and "1.0-ü" in texts
    assert sr.SeriesDescription == "détecteur-lésions 1.0-ü results"


def test_values_are_padded_to_even_lengths_uids_with_nul_and_strings_with_space() -> None:
    item = Item(ReferencedSOPInstanceUID="1.2.3", CodeMeaning="odd", NumericValue="0.5")
    element = raw_sequence("ContentSequence", [item], "iso8859")
    ds = pydicom.dcmread(BytesIO(b"\0" * 128 + b"DICM" + _meta() + _element_bytes(element)), force=True)
    [decoded] = ds.ContentSequence
    assert decoded.ReferencedSOPInstanceUID == "1.2.3"
    assert decoded.CodeMeaning == "odd"
    body = element.value
    assert b"1.2.3\0" in body and b"odd " in body and b"0.5 " in body
    assert len(body) % 2 == 0


def test_a_value_representation_not_encoded_here_is_refused() -> None:
    with pytest.raises(ValueError, match="value representation PN is not encoded here"):
        raw_sequence("ContentSequence", [Item(PatientName="Doe^Jane")], "iso8859")
    with pytest.raises(ValueError, match="value representation AT is not encoded here"):
        raw_sequence("ContentSequence", [Item(OffendingElement=0x00100010)], "iso8859")
    with pytest.raises(ValueError, match="must be text or a number, not bytes"):
        raw_sequence("ContentSequence", [Item(CodeMeaning=b"raw")], "iso8859")
    with pytest.raises(ValueError, match="not a sequence"):
        raw_sequence("CodeMeaning", [], "iso8859")
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        raw_sequence("ContentSequence", [Item(NoSuchKeyword="x")], "iso8859")


def test_character_set_is_what_pydicom_compares_against() -> None:
    ds = pydicom.Dataset()
    assert character_set(ds) == ds._character_set
    ds.SpecificCharacterSet = "ISO_IR 192"
    assert character_set(ds) == ds._character_set


def _meta() -> bytes:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(buffer, meta)
    return buffer.getvalue()


def _element_bytes(element: pydicom.dataelem.RawDataElement) -> bytes:
    return (
        struct.pack("<HH", element.tag >> 16, element.tag & 0xFFFF)
        + b"SQ\0\0"
        + struct.pack("<I", element.length)
        + element.value
    )
