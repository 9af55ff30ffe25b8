"""The JSON result document: content, summary, references, no patient identity, validation."""

import doctest
from datetime import UTC, datetime
from types import ModuleType

import pytest
from pydantic import ValidationError
from results_sources import (
    ACCESSION_NUMBER,
    MODEL_NAME,
    MODEL_VERSION,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    THRESHOLD,
    Study,
    make_ct_series,
    make_output,
)

import worker.results.document
import worker.results.seg
from worker.results import (
    InconsistentInputError,
    ResultDocument,
    build_result_document,
    build_segs,
    build_sr,
)

CREATED_AT = datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


def _document(study: Study) -> ResultDocument:
    return build_result_document(
        study.headers,
        study.outputs,
        THRESHOLD,
        structured_report=build_sr(study.headers, study.outputs, threshold=THRESHOLD),
        segmentations=build_segs(study.headers, study.outputs, THRESHOLD),
        created_at=CREATED_AT,
    )


def test_document_describes_each_instance(study: Study) -> None:
    document = _document(study)
    assert document.schema_version == "1.0"
    assert document.study_instance_uid == study.ct[0].StudyInstanceUID
    assert (document.model.name, document.model.version) == (MODEL_NAME, MODEL_VERSION)
    assert document.created_at == CREATED_AT
    assert [item.sop_instance_uid for item in document.instances] == [h.SOPInstanceUID for h in study.headers]
    for item, header, output in zip(document.instances, study.headers, study.outputs, strict=True):
        assert item.series_instance_uid == header.SeriesInstanceUID
        assert item.sop_class_uid == header.SOPClassUID
        assert item.probability == output.probability
        assert item.label == output.label
        assert item.threshold == THRESHOLD
        assert item.positive == (output.probability >= THRESHOLD)
        assert (item.peak.row, item.peak.column) == (output.peak_row, output.peak_col)
        assert item.timings_ms == output.timings_ms


def test_document_names_the_analysed_frame_of_a_multiframe_source(study: Study) -> None:
    study.ct[0].NumberOfFrames = 4
    document = build_result_document(study.headers, study.outputs, THRESHOLD)
    frames = {item.sop_instance_uid: item.frame_number for item in document.instances}
    assert frames[study.ct[0].SOPInstanceUID] == 3  # the middle of 4 frames (index 2), as preprocessing takes
    assert [frames[h.SOPInstanceUID] for h in study.headers[1:]] == [None, None, None]  # single-frame images
    assert '"frame_number":null' in document.model_dump_json()


def test_document_summarises_the_study(study: Study) -> None:
    summary = _document(study).summary
    assert summary.instance_count == 4
    assert summary.positive_count == 3
    assert summary.max_probability == 0.92
    assert summary.any_positive is True


def test_document_summary_of_a_negative_study(study: Study) -> None:
    outputs = [make_output(header, 0.1 + 0.1 * index) for index, header in enumerate(study.ct)]
    summary = build_result_document(study.ct, outputs, THRESHOLD).summary
    assert (summary.positive_count, summary.any_positive) == (0, False)
    assert summary.max_probability == pytest.approx(0.3)


def test_document_references_the_sr_and_seg_produced(study: Study) -> None:
    sr = build_sr(study.headers, study.outputs, threshold=THRESHOLD)
    segs = build_segs(study.headers, study.outputs, THRESHOLD)
    document = build_result_document(study.headers, study.outputs, THRESHOLD, structured_report=sr, segmentations=segs)
    assert [ref.sop_instance_uid for ref in document.structured_reports] == [sr.SOPInstanceUID]
    assert [ref.sop_class_uid for ref in document.structured_reports] == [sr.SOPClassUID]
    assert [ref.sop_instance_uid for ref in document.segmentations] == [seg.SOPInstanceUID for seg in segs]
    assert len(document.segmentations) == 2


def test_document_json_has_no_patient_identity(study: Study) -> None:
    text = _document(study).model_dump_json()
    for value in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, PATIENT_BIRTH_DATE, ACCESSION_NUMBER):
        assert value not in text
    assert "patient" not in text.lower()


def test_document_json_round_trips(study: Study) -> None:
    document = _document(study)
    assert ResultDocument.model_validate_json(document.model_dump_json()) == document


def test_document_refuses_a_summary_that_does_not_match(study: Study) -> None:
    data = _document(study).model_dump()
    data["summary"]["any_positive"] = False
    with pytest.raises(ValidationError, match="summary"):
        ResultDocument.model_validate(data)


def test_document_refuses_unknown_schema_versions_and_fields(study: Study) -> None:
    data = _document(study).model_dump()
    with pytest.raises(ValidationError, match="schema_version"):
        ResultDocument.model_validate({**data, "schema_version": "2.0"})
    with pytest.raises(ValidationError, match="patient_name"):
        ResultDocument.model_validate({**data, "patient_name": PATIENT_NAME})


def test_document_refuses_naive_times_and_bad_thresholds(study: Study) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        build_result_document(study.headers, study.outputs, THRESHOLD, created_at=datetime(2026, 3, 1))
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        build_result_document(study.headers, study.outputs, 1.5)


def test_document_refuses_outputs_that_do_not_match_the_sources(study: Study) -> None:
    with pytest.raises(InconsistentInputError, match="no model outputs"):
        build_result_document(study.headers, [], THRESHOLD)
    with pytest.raises(InconsistentInputError, match="more than one model output"):
        build_result_document(study.headers, [study.outputs[0], study.outputs[0]], THRESHOLD)
    stranger = make_ct_series(study.ct[0].StudyInstanceUID, slices=1)[0]
    with pytest.raises(InconsistentInputError, match="without a source header"):
        build_result_document(study.headers, [make_output(stranger, 0.5)], THRESHOLD)


def test_document_lists_only_analysed_instances(study: Study) -> None:
    document = build_result_document(study.headers, study.outputs[:2], THRESHOLD)
    assert [item.sop_instance_uid for item in document.instances] == [h.SOPInstanceUID for h in study.ct[:2]]


@pytest.mark.parametrize("module", [worker.results.document, worker.results.seg])
def test_docstring_examples(module: ModuleType) -> None:
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0
    assert failed == 0
