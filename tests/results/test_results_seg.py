"""The lesion Segmentations: geometry groups, masks, references, bytes round-trip, dciodvfy."""

from collections.abc import Callable
from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import SegmentationStorage, generate_uid
from results_sources import (
    MODEL_NAME,
    MODEL_VERSION,
    PATIENT_ID,
    PATIENT_NAME,
    THRESHOLD,
    Study,
    Verification,
    blob_heatmap,
    dicom_json,
    make_cr,
    make_ct_series,
    make_output,
)

from worker.results import (
    IncompatibleSourcesError,
    build_seg,
    build_segs,
    dataset_from_bytes,
    dataset_to_bytes,
    upsample_heatmap,
)
from worker.results.seg import lesion_mask


def _read(seg: Dataset | None) -> hd.seg.Segmentation:
    return hd.seg.segread(BytesIO(dataset_to_bytes(_built(seg))))


def _built(seg: Dataset | None) -> Dataset:
    assert seg is not None, "expected a Segmentation, got None"
    return seg


def _referenced_instances(seg: Dataset) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }


def test_ct_seg_round_trips_through_bytes_unchanged(study: Study) -> None:
    seg = build_seg(study.ct, study.outputs[:3], THRESHOLD)
    assert seg is not None
    data = dataset_to_bytes(seg)
    read = dataset_from_bytes(data)
    assert dicom_json(read) == dicom_json(seg)
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert dataset_to_bytes(read) == data


def test_ct_seg_passes_dciodvfy(study: Study, dciodvfy: Callable[[bytes], Verification]) -> None:
    seg = build_seg(study.ct, study.outputs[:3], THRESHOLD)
    assert seg is not None
    result = dciodvfy(dataset_to_bytes(seg))
    assert "Segmentation" in result.output
    assert result.errors == [], result.output


def test_dx_seg_passes_dciodvfy(study: Study, dciodvfy: Callable[[bytes], Verification]) -> None:
    seg = build_seg([study.dx], study.outputs[3:], THRESHOLD)
    assert seg is not None
    result = dciodvfy(dataset_to_bytes(seg))
    assert result.errors == [], result.output


def test_cr_seg_passes_dciodvfy(study: Study, dciodvfy: Callable[[bytes], Verification]) -> None:
    cr = make_cr(study.dx.StudyInstanceUID)
    seg = _built(build_seg([cr], [make_output(cr, 0.8, blob_heatmap(20, 10))], THRESHOLD))
    assert "FrameOfReferenceUID" not in seg
    assert _referenced_instances(seg) == {cr.SOPInstanceUID}
    result = dciodvfy(dataset_to_bytes(seg))
    assert result.errors == [], result.output


def test_seg_of_a_source_without_optional_patient_attributes(
    study: Study, dciodvfy: Callable[[bytes], Verification]
) -> None:
    """Type 2 attributes missing from the source stay empty in the SEG instead of failing it."""
    source = study.ct[0]
    missing = ("PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyID")
    for keyword in missing:
        delattr(source, keyword)
    seg = dataset_from_bytes(dataset_to_bytes(_built(build_seg([source], study.outputs[:1], THRESHOLD))))
    assert [seg[keyword].value for keyword in missing] == ["", "", "", ""]
    assert seg.PatientID == PATIENT_ID
    assert not any(keyword in source for keyword in missing)  # the source itself is not changed
    result = dciodvfy(dataset_to_bytes(seg))
    assert result.errors == [], result.output


def test_ct_seg_references_its_sources_and_copies_patient_and_study(study: Study) -> None:
    seg = dataset_from_bytes(dataset_to_bytes(_built(build_seg(study.ct, study.outputs[:3], THRESHOLD))))
    assert seg.SOPClassUID == SegmentationStorage
    assert _referenced_instances(seg) == {header.SOPInstanceUID for header in study.ct}
    derived_from = {
        source.ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    # the negative slice's empty frame is omitted
    assert derived_from == {study.ct[0].SOPInstanceUID, study.ct[1].SOPInstanceUID}
    assert seg.FrameOfReferenceUID == study.ct[0].FrameOfReferenceUID
    assert str(seg.PatientName) == PATIENT_NAME
    assert seg.PatientID == PATIENT_ID
    assert seg.StudyInstanceUID == study.ct[0].StudyInstanceUID
    assert seg.SeriesInstanceUID != study.ct[0].SeriesInstanceUID
    assert seg.Manufacturer == "RadStream"
    assert seg.SegmentationType == "BINARY"


def test_seg_describes_one_automatic_lesion_segment(study: Study) -> None:
    seg = _read(build_seg(study.ct, study.outputs[:3], THRESHOLD))
    assert seg.get_segment_numbers() == [1]
    segment = seg.get_segment_description(1)
    assert segment.segment_label == "Lesion"
    assert segment.segmented_property_category == hd.sr.CodedConcept("49755003", "SCT", "x")
    assert segment.segmented_property_type == hd.sr.CodedConcept("52988006", "SCT", "x")
    assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert segment.algorithm_identification is not None
    algorithm = segment.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (MODEL_NAME, MODEL_VERSION)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


def test_ct_seg_masks_are_the_thresholded_upsampled_heatmaps(study: Study) -> None:
    seg = _read(build_seg(study.ct, study.outputs[:3], THRESHOLD))
    uids = [header.SOPInstanceUID for header in study.ct]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    assert pixels.shape == (3, 64, 64, 1)
    for index, (header, output) in enumerate(zip(study.ct, study.outputs[:3], strict=True)):
        expected = lesion_mask(output, header, THRESHOLD)
        np.testing.assert_array_equal(pixels[index, :, :, 0], expected.astype(pixels.dtype))
    assert pixels[0, round(study.outputs[0].peak_row), round(study.outputs[0].peak_col), 0] == 1
    assert pixels[0].sum() > 0
    assert pixels[2].sum() == 0


def test_dx_seg_is_pixel_aligned_without_frame_of_reference(study: Study) -> None:
    seg = dataset_from_bytes(dataset_to_bytes(_built(build_seg([study.dx], study.outputs[3:], THRESHOLD))))
    assert "FrameOfReferenceUID" not in seg
    assert list(seg.PatientOrientation) == list(study.dx.PatientOrientation)
    assert (seg.Rows, seg.Columns) == (study.dx.Rows, study.dx.Columns)
    assert _referenced_instances(seg) == {study.dx.SOPInstanceUID}
    mask = _read(seg).get_pixels_by_source_instance([study.dx.SOPInstanceUID], segment_numbers=[1])
    expected = lesion_mask(study.outputs[3], study.dx, THRESHOLD)
    np.testing.assert_array_equal(mask[0, :, :, 0], expected.astype(mask.dtype))


def test_build_segs_splits_a_mixed_study_by_geometry(study: Study, dciodvfy: Callable[[bytes], Verification]) -> None:
    other_series = make_ct_series(study.ct[0].StudyInstanceUID, slices=2, size=48)
    headers = [*study.headers, *other_series]
    outputs = [*study.outputs, *(make_output(header, 0.8, blob_heatmap(16, 16)) for header in other_series)]
    segs = build_segs(headers, outputs, THRESHOLD)
    assert len(segs) == 3
    assert len({seg.SeriesInstanceUID for seg in segs}) == 1
    assert [seg.InstanceNumber for seg in segs] == [1, 2, 3]
    references = [_referenced_instances(seg) for seg in segs]
    assert references == [
        {header.SOPInstanceUID for header in study.ct},
        {study.dx.SOPInstanceUID},
        {header.SOPInstanceUID for header in other_series},
    ]
    for seg in segs:
        result = dciodvfy(dataset_to_bytes(seg))
        assert result.errors == [], result.output


def test_build_seg_refuses_images_of_several_geometry_groups(study: Study) -> None:
    with pytest.raises(IncompatibleSourcesError, match="geometry groups"):
        build_seg(study.headers, study.outputs, THRESHOLD)
    two_projections = [study.dx, study.ct[0]]
    del two_projections[1].FrameOfReferenceUID
    del two_projections[1].ImagePositionPatient
    with pytest.raises(IncompatibleSourcesError):
        build_seg(two_projections, [study.outputs[3], study.outputs[0]], THRESHOLD)


def test_no_positive_image_gives_no_seg(study: Study) -> None:
    outputs = [make_output(header, 0.2) for header in study.headers]
    assert build_seg(study.ct, outputs[:3], THRESHOLD) is None
    assert build_segs(study.headers, outputs, THRESHOLD) == []


def test_positive_image_whose_heatmap_stays_below_threshold_gives_no_seg(study: Study) -> None:
    flat = np.full((32, 32), 0.3, dtype=np.float32)
    assert build_seg([study.dx], [make_output(study.dx, 0.9, flat)], THRESHOLD) is None


def test_output_without_heatmap_gives_no_seg(study: Study) -> None:
    empty = np.zeros((0, 0), dtype=np.float32)
    assert build_seg([study.dx], [make_output(study.dx, 0.9, empty)], THRESHOLD) is None


def test_multiframe_source_gives_no_seg(study: Study) -> None:
    study.dx.NumberOfFrames = 2
    assert build_seg([study.dx], study.outputs[3:], THRESHOLD) is None
    assert build_segs([study.dx], study.outputs[3:], THRESHOLD) == []


def test_seg_refuses_threshold_outside_unit_interval(study: Study) -> None:
    with pytest.raises(ValueError, match="threshold"):
        build_seg(study.ct, study.outputs[:3], 1.5)


def test_upsample_keeps_constant_maps_and_resizes() -> None:
    result = upsample_heatmap(np.full((32, 32), 0.25, dtype=np.float32), 80, 60)
    assert result.shape == (80, 60)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, 0.25)


def test_upsample_interpolates_between_pixel_centres() -> None:
    source = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    result = upsample_heatmap(source, 4, 4)
    np.testing.assert_allclose(result[0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(result[:, 0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(result[1, 1], 0.375)
    np.testing.assert_array_equal(upsample_heatmap(source, 2, 2), source)


def test_upsample_refuses_non_2d_heatmaps() -> None:
    with pytest.raises(ValueError, match="2D"):
        upsample_heatmap(np.zeros(32, dtype=np.float32), 64, 64)


def test_seg_uids_can_be_chosen(study: Study) -> None:
    series_uid, sop_uid = generate_uid(), generate_uid()
    seg = build_seg([study.dx], study.outputs[3:], THRESHOLD, series_instance_uid=series_uid, sop_instance_uid=sop_uid)
    assert seg is not None
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == (series_uid, sop_uid)
