"""Patient values that do not parse (a birth date written 1961-04-07, a PatientSex of "U") neither fail a
study's results nor reach a log: highdicom refused them and pydicom and highdicom quote them when they do."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pydicom
import pydicom.config
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from results_sources import blob_heatmap, make_dx, make_output

from radstream.dicom import keep_values_out_of_logs, read_values_unvalidated
from radstream.errors import describe
from worker.results._sources import with_type2_defaults
from worker.stages.store import _build

VALUES = {"PatientBirthDate": "1961-04-07", "StudyDate": "2026-03-01", "PatientSex": "U"}
NAME, PATIENT_ID = "DOE^JANE", "MRN-9876543"


@pytest.fixture
def quiet() -> Iterator[None]:
    """read_values_unvalidated() and keep_values_out_of_logs() as every process calls them, undone afterwards
    (they are process-wide)."""
    mode = pydicom.config.settings.reading_validation_mode
    loggers = {
        name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in ("pydicom", "highdicom")
    }
    with warnings.catch_warnings():
        read_values_unvalidated()
        keep_values_out_of_logs()
        yield
    pydicom.config.settings.reading_validation_mode = mode
    for name, (level, propagate) in loggers.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


def _stored_header() -> pydicom.Dataset:
    """A DX instance with non-conformant patient values, written and read back as StoreResults reads it."""
    ds = make_dx(generate_uid())
    ds.PatientName, ds.PatientID = NAME, PATIENT_ID
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values as they are set
        for keyword, value in VALUES.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)


def test_invalid_patient_values_are_left_empty_in_the_segmentation_and_logged_by_name_only(
    quiet: None, caplog: pytest.LogCaptureFixture
) -> None:
    header = _stored_header()
    caplog.set_level(logging.DEBUG)
    document, (_, sr), segs = _build([header], [make_output(header, 0.9, blob_heatmap(5, 25))], 0.5, [], "results/r")
    assert len(segs) == 1
    seg = pydicom.dcmread(io.BytesIO(segs[0][1]))
    assert (seg.PatientBirthDate, seg.StudyDate, seg.PatientSex) == ("", "", "")
    assert seg.PatientName == NAME and seg.PatientID == PATIENT_ID  # valid values are copied as they are
    assert header.PatientBirthDate == VALUES["PatientBirthDate"]  # the source is not changed
    assert "PatientBirthDate of a source image is not a valid value" in caplog.text
    for value in (*VALUES.values(), "DOE", PATIENT_ID):
        assert value not in caplog.text, value


def test_a_valid_header_is_used_as_it_is() -> None:
    header = make_dx(generate_uid())
    header.PatientBirthDate, header.StudyDate, header.StudyTime, header.PatientSex = "19610407", "20260301", "1015", "F"
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(header, keyword, getattr(header, keyword, None) or "")
    assert with_type2_defaults(header) is header


def test_describe_names_the_place_not_the_message() -> None:
    try:
        pydicom.valuerep.DA("1961-04-07")
    except ValueError as exc:
        text = describe(exc)
    assert text.startswith("ValueError at pydicom/valuerep.py:") and "1961" not in text


def test_a_lambda_stage_that_raises_unexpectedly_reports_where_not_what(
    quiet: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Step Functions records a Lambda's error message in the execution history, MarkFailed copies it into
    the study status, and Lambda logs it: an unexpected exception's message (here, what highdicom says
    about a birth date) must reach none of them."""
    from worker.formats.errors import InternalError
    from worker.stages import main as lambdas

    async def stage(ctx: object, event: dict[str, object]) -> dict[str, object]:
        pydicom.valuerep.DA(VALUES["PatientBirthDate"])  # ValueError quoting the value
        return {}

    runtime = lambdas._Runtime()
    with pytest.raises(InternalError) as raised:
        runtime.run(stage, {})
    assert str(raised.value).startswith("ValueError at pydicom/valuerep.py:")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert "unexpected ValueError at pydicom/valuerep.py" in caplog.text
    assert VALUES["PatientBirthDate"] not in caplog.text and VALUES["PatientBirthDate"] not in str(raised.value)
