"""The study SR: content, references, patient/study copy, bytes round-trip, dciodvfy."""

import dataclasses
from collections.abc import Callable
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom.config
import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from pydicom.valuerep import DA, TM
from reference_sr import build_sr_with_highdicom
from results_sources import (
    ACCESSION_NUMBER,
    MODEL_NAME,
    MODEL_VERSION,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    THRESHOLD,
    Study,
    Verification,
    dicom_json,
    make_ct_series,
    make_output,
)

from worker.formats.types import InstanceOutput
from worker.results import InconsistentInputError, build_sr, dataset_from_bytes, dataset_to_bytes
from worker.results.codes import ABSENT, LESION, PRESENT, PROBABILITY

# Attributes that differ between two builds of one report: creation dates and times (not the source's
# acquisition time in the first Contributing Equipment item, which is compared) and generated Tracking UIDs.
_GENERATED = {"00080012", "00080013", "00080023", "00080033"}
_TRACKING_UID = "112040"


def _comparable(element: object) -> object:
    """DICOM JSON with generated values blanked (times, Tracking UIDs), for comparing two builds."""
    if isinstance(element, list):
        return [_comparable(item) for item in element]
    if not isinstance(element, dict):
        return element
    result = {tag: ("generated" if tag in _GENERATED else _comparable(value)) for tag, value in element.items()}
    name = element.get("0040A043", {}).get("Value", [{}])[0].get("00080100", {}).get("Value", [None])[0]
    if name == _TRACKING_UID:
        result["0040A124"] = "generated"
    return result


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    """Decode the SR's bytes with highdicom and return its measurement report."""
    content = hd.sr.srread(BytesIO(dataset_to_bytes(sr))).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def test_sr_round_trips_through_bytes_unchanged(study: Study) -> None:
    sr = build_sr(study.headers, study.outputs, threshold=THRESHOLD)
    data = dataset_to_bytes(sr)
    read = dataset_from_bytes(data)
    assert dicom_json(read) == dicom_json(sr)
    assert set(read.keys()) == set(sr.keys())
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert read.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert dataset_to_bytes(read) == data


def _equipment(header: Dataset, variant: str) -> Dataset:
    """The source's acquisition equipment attributes, in the forms sources carry them."""
    if variant == "typed date and time":
        header.AcquisitionDate = DA("20260301")
        header.AcquisitionTime = TM("101501.25")
    elif variant == "datetime":
        header.AcquisitionDateTime = "20260301101501.250000"
    elif variant == "invalid station name":  # longer than SH allows: the acquisition item is left out
        # pydicom validates what is set with its reading mode, which a process running the pipeline turns
        # off (radstream.dicom.read_values_unvalidated): it is set here, whatever ran before in this process.
        mode = pydicom.config.settings.reading_validation_mode
        pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
        try:
            with pytest.warns(UserWarning, match="exceeds the maximum length"):
                header.StationName = "STATION-NAME-TOO-LONG"
        finally:
            pydicom.config.settings.reading_validation_mode = mode
    header.ManufacturerModelName = "Scanner 9000"
    header.SoftwareVersions = ["VA10", "SP2"]
    header.DeviceSerialNumber = "SN-1"
    header.InstitutionName = "General Hospital"
    return header


def _multiframe(header: Dataset) -> Dataset:
    header.NumberOfFrames = 5
    return header


@pytest.mark.parametrize(
    "which",
    [
        "study",
        "one image",
        "one negative image",
        "typed date and time",
        "datetime",
        "invalid station name",
        "multi-frame",
    ],
)
def test_sr_equals_what_highdicom_builds(study: Study, which: str) -> None:
    """The report is written item by item (for speed); highdicom's builder is the reference it must equal."""
    cases: dict[str, Callable[[], tuple[list[Dataset], list[InstanceOutput]]]] = {  # built only when chosen
        "study": lambda: (study.headers, study.outputs),
        "one image": lambda: (study.ct[:1], study.outputs[:1]),
        "one negative image": lambda: (study.ct[2:3], study.outputs[2:3]),
        "typed date and time": lambda: ([_equipment(study.ct[0], which)], study.outputs[:1]),
        "datetime": lambda: ([_equipment(study.dx, which)], study.outputs[3:]),
        "invalid station name": lambda: ([_equipment(study.ct[0], which)], study.outputs[:1]),
        "multi-frame": lambda: ([_multiframe(study.ct[0])], study.outputs[:1]),
    }
    headers, outputs = cases[which]()
    assert ("NumberOfFrames" in headers[0]) == (which == "multi-frame")
    assert ("ManufacturerModelName" in headers[0]) == (
        which in ("typed date and time", "datetime", "invalid station name")
    )
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    ours = dataset_from_bytes(dataset_to_bytes(build_sr(headers, outputs, threshold=THRESHOLD, **uids)))
    reference = dataset_from_bytes(
        dataset_to_bytes(build_sr_with_highdicom(headers, outputs, threshold=THRESHOLD, **uids))
    )
    ours_json, reference_json = _comparable(ours.to_json_dict()), _comparable(reference.to_json_dict())
    assert isinstance(ours_json, dict) and isinstance(reference_json, dict)
    # the one intended difference: the last Contributing Equipment item, the software, is RadStream
    ours_software = ours_json["0018A001"]["Value"].pop()
    reference_software = reference_json["0018A001"]["Value"].pop()
    assert ours_software["00080070"]["Value"] == ["RadStream"]
    assert reference_software["00080070"]["Value"] == ["Highdicom open-source contributors"]
    assert ours_software["0040A170"] == reference_software["0040A170"]  # both Processing Equipment
    assert ours_json == reference_json  # including the acquisition equipment item, when there is one
    assert set(ours.keys()) == set(reference.keys())
    acquisition = len(ours.ContributingEquipmentSequence) == 2
    assert acquisition == (which != "invalid station name")


def test_sr_of_a_multiframe_source_references_the_analysed_frame(study: Study) -> None:
    header = _multiframe(study.ct[0])
    report = _report(build_sr([header], study.outputs[:1], threshold=THRESHOLD))
    [group] = report.get_planar_roi_measurement_groups()
    image = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedFrameNumber == 3  # the middle of 5 frames, the one the model sees


def test_sr_leaves_out_an_empty_character_set_and_shortens_a_long_series_description(
    study: Study, dciodvfy: Callable[[bytes], Verification]
) -> None:
    header = study.ct[0]
    header.SpecificCharacterSet = ""
    [output] = study.outputs[:1]
    long_name = dataclasses.replace(
        output, model_name="a-model-with-a-rather-long-name-for-a-pacs", model_version="2026.11.26-rc1"
    )
    sr = dataset_from_bytes(dataset_to_bytes(build_sr([header], [long_name], threshold=THRESHOLD)))
    assert "SpecificCharacterSet" not in sr
    assert len(sr.SeriesDescription) == 64 and sr.SeriesDescription.startswith("a-model-with")
    result = dciodvfy(dataset_to_bytes(sr))
    assert result.errors == [], result.output


def test_sr_of_a_source_without_optional_patient_attributes(dciodvfy: Callable[[bytes], Verification]) -> None:
    """Type 2 attributes missing from the source (sex, referring physician, accession) stay empty, not fatal."""
    [header] = make_ct_series(generate_uid(), slices=1)
    for keyword in ("PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyID", "Manufacturer"):
        delattr(header, keyword)
    sr = dataset_from_bytes(dataset_to_bytes(build_sr([header], [make_output(header, 0.9)], threshold=THRESHOLD)))
    assert sr.PatientSex == "" and sr.AccessionNumber == "" and sr.ReferringPhysicianName == ""
    assert sr.PatientID == PATIENT_ID
    assert [item.Manufacturer for item in sr.ContributingEquipmentSequence] == ["RadStream"]
    result = dciodvfy(dataset_to_bytes(sr))
    assert result.errors == [], result.output


def test_sr_passes_dciodvfy(study: Study, dciodvfy: Callable[[bytes], Verification]) -> None:
    sr = build_sr(study.headers, study.outputs, threshold=THRESHOLD)
    result = dciodvfy(dataset_to_bytes(sr))
    assert "Comprehensive3DSR" in result.output
    assert result.errors == [], result.output


def test_sr_copies_patient_and_study_into_a_new_series(study: Study) -> None:
    sr = dataset_from_bytes(dataset_to_bytes(build_sr(study.headers, study.outputs, threshold=THRESHOLD)))
    source = study.ct[0]
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert str(sr.PatientName) == PATIENT_NAME
    assert sr.PatientID == PATIENT_ID
    assert sr.PatientBirthDate == PATIENT_BIRTH_DATE
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.AccessionNumber == ACCESSION_NUMBER
    assert sr.Modality == "SR"
    assert sr.Manufacturer == "RadStream"
    assert sr.SeriesInstanceUID not in {header.SeriesInstanceUID for header in study.headers}
    assert sr.CompletionFlag == "COMPLETE"


def test_sr_references_every_source_instance_as_evidence(study: Study) -> None:
    sr = dataset_from_bytes(dataset_to_bytes(build_sr(study.headers, study.outputs, threshold=THRESHOLD)))
    evidence = {
        item.ReferencedSOPInstanceUID: item.ReferencedSOPClassUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {header.SOPInstanceUID: header.SOPClassUID for header in study.headers}


def test_sr_records_probability_finding_and_peak_point_per_image(study: Study) -> None:
    report = _report(build_sr(study.headers, study.outputs, threshold=THRESHOLD))
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(study.outputs)
    by_instance = {}
    for group in groups:
        assert isinstance(group.roi, hd.sr.ImageRegion)
        image = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        by_instance[image.ReferencedSOPInstanceUID] = (group, group.roi)
    for header, output in zip(study.headers, study.outputs, strict=True):
        group, region = by_instance[header.SOPInstanceUID]
        assert group.finding_type == LESION
        assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
        np.testing.assert_allclose(region.value, [[output.peak_col + 0.5, output.peak_row + 0.5]], rtol=1e-6)
        [measurement] = group.get_measurements(name=PROBABILITY)
        assert measurement.value == pytest.approx(output.probability, abs=1e-6)
        assert measurement.unit.value == "1"
        [evaluation] = group.get_qualitative_evaluations(name=LESION)
        assert evaluation.value == (PRESENT if output.probability >= THRESHOLD else ABSENT)


def test_sr_identifies_the_model(study: Study) -> None:
    report = _report(build_sr(study.headers, study.outputs, threshold=THRESHOLD))
    context = report[0].ContentSequence
    texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue") for item in context}
    assert texts["Device Observer Name"] == MODEL_NAME
    assert texts["Device Observer Manufacturer"] == "RadStream"
    group = report.get_planar_roi_measurement_groups()[0]
    algorithm = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    }
    assert algorithm["Algorithm Name"] == MODEL_NAME
    assert algorithm["Algorithm Version"] == MODEL_VERSION


def test_sr_has_the_mandatory_image_library_before_the_measurements(study: Study) -> None:
    report = _report(build_sr(study.headers, study.outputs, threshold=THRESHOLD))
    content = report[0].ContentSequence
    names = [(item.ConceptNameCodeSequence[0].CodeValue, item.ValueType) for item in content]
    assert names.count(("111028", "CONTAINER")) == 1  # TID 1500 row 5: Image Library, mandatory
    library = content[names.index(("111028", "CONTAINER"))]
    assert library.RelationshipType == "CONTAINS"
    assert "ContentSequence" not in library  # its groups (TID 1600 row 2) are optional
    assert names.index(("111028", "CONTAINER")) < names.index(("126010", "CONTAINER"))  # Imaging Measurements
    # each image stays referenced by its measurement group
    referenced = {
        group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in report.get_planar_roi_measurement_groups()
    }
    assert referenced == {str(h.SOPInstanceUID) for h in study.headers}


def test_sr_with_no_positive_image_records_absent_findings(study: Study) -> None:
    outputs = [make_output(header, 0.1) for header in study.ct]
    report = _report(build_sr(study.ct, outputs, threshold=THRESHOLD))
    values = [group.get_qualitative_evaluations()[0].value for group in report.get_planar_roi_measurement_groups()]
    assert values == [ABSENT] * len(study.ct)


def test_sr_refuses_outputs_for_unknown_instances(study: Study) -> None:
    stranger = make_ct_series(study.ct[0].StudyInstanceUID, slices=1)[0]
    with pytest.raises(InconsistentInputError, match="without a source header"):
        build_sr(study.ct, [make_output(stranger, 0.9)], threshold=THRESHOLD)


def test_sr_refuses_outputs_of_several_models(study: Study) -> None:
    outputs = [make_output(study.ct[0], 0.9), make_output(study.ct[1], 0.9, model_version="4.0.0")]
    with pytest.raises(InconsistentInputError, match="model name/version"):
        build_sr(study.ct, outputs, threshold=THRESHOLD)


def test_sr_refuses_sources_of_several_studies(study: Study) -> None:
    other = make_ct_series(generate_uid(), slices=1)
    with pytest.raises(InconsistentInputError, match="studies"):
        build_sr([*study.ct, *other], [make_output(study.ct[0], 0.9)], threshold=THRESHOLD)
