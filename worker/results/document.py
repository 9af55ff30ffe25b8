"""The study-level JSON result document returned to API clients.

The document is tenant-free and carries no patient identity: only UIDs,
model identification, numbers and references to the DICOM objects produced.
Patient attributes stay in the DICOM SR/SEG written for the PACS.
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydicom import Dataset

from worker.formats.types import InstanceOutput
from worker.models.preprocess import analysed_frame_number
from worker.results._sources import pair

SCHEMA_VERSION: Literal["1.0"] = "1.0"

DicomUid = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$", max_length=64)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelIdentification(_Frozen):
    """The model that produced the results."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)


class PixelLocation(_Frozen):
    """A location in source image pixel coordinates (row/column indices, pixel centres at integers)."""

    row: float
    column: float


class InstanceResult(_Frozen):
    """The model's result for one source SOP instance."""

    study_instance_uid: DicomUid
    series_instance_uid: DicomUid
    sop_instance_uid: DicomUid
    sop_class_uid: DicomUid
    probability: Probability
    label: str
    threshold: Probability
    positive: bool
    peak: PixelLocation
    frame_number: int | None = Field(
        default=None,
        ge=1,
        description="the frame of a multi-frame source the model analysed (1-based; the middle one); "
        "null for a single-frame image",
    )
    timings_ms: dict[str, Annotated[float, Field(ge=0.0)]]

    @model_validator(mode="after")
    def _positive_matches_threshold(self) -> Self:
        if self.positive != (self.probability >= self.threshold):
            raise ValueError("positive must be probability >= threshold")
        return self


class StudySummary(_Frozen):
    """Study-level summary over every instance result."""

    instance_count: int = Field(ge=1)
    positive_count: int = Field(ge=0)
    max_probability: Probability
    any_positive: bool


class DicomObjectReference(_Frozen):
    """A DICOM object (SR or SEG) produced for the study."""

    series_instance_uid: DicomUid
    sop_instance_uid: DicomUid
    sop_class_uid: DicomUid
    key: str | None = Field(None, description="where the object is in the results bucket (added in 1.0's life)")


class NotAnalysed(_Frozen):
    """An instance of the request that has no result, and why (decoding failed, no model accepts it)."""

    sop_instance_uid: DicomUid
    reason: str = Field(max_length=300)


class ResultDocument(_Frozen):
    """Versioned, study-level result of one model run, free of patient identity."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    study_instance_uid: DicomUid
    model: ModelIdentification
    created_at: AwareDatetime
    threshold: Probability
    instances: tuple[InstanceResult, ...] = Field(min_length=1)
    summary: StudySummary
    structured_reports: tuple[DicomObjectReference, ...] = ()
    segmentations: tuple[DicomObjectReference, ...] = ()
    not_analysed: tuple[NotAnalysed, ...] = ()
    run_id: str | None = Field(None, description="the pipeline run that built this document (added in 1.0's life)")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if any(item.study_instance_uid != self.study_instance_uid for item in self.instances):
            raise ValueError("every instance must belong to the document's study")
        if any(item.threshold != self.threshold for item in self.instances):
            raise ValueError("every instance must use the document's threshold")
        if self.summary != summarise(self.instances):
            raise ValueError("summary does not match the instance results")
        return self


def summarise(instances: Sequence[InstanceResult]) -> StudySummary:
    """Compute the study summary of a non-empty sequence of instance results."""
    positives = sum(1 for item in instances if item.positive)
    return StudySummary(
        instance_count=len(instances),
        positive_count=positives,
        max_probability=max(item.probability for item in instances),
        any_positive=positives > 0,
    )


def _reference(dataset: Dataset) -> DicomObjectReference:
    return DicomObjectReference(
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        sop_class_uid=str(dataset.SOPClassUID),
    )


def build_result_document(
    source_headers: Sequence[Dataset],
    outputs: Sequence[InstanceOutput],
    threshold: float,
    *,
    structured_report: Dataset | None = None,
    segmentations: Sequence[Dataset] = (),
    created_at: datetime | None = None,
    not_analysed: Sequence[tuple[str, str]] = (),
) -> ResultDocument:
    """Build the JSON result document of one study.

    Parameters
    ----------
    source_headers:
        Headers (pixel data not needed) of the study's source images.
    outputs:
        One model output per analysed source image, all from one model.
    threshold:
        Probability at or above which an instance counts as positive.
    structured_report, segmentations:
        The SR and SEG instances produced for the study, referenced by UID.
    created_at:
        Creation time (timezone-aware); the current UTC time by default.
    not_analysed:
        ``(sop_instance_uid, reason)`` of instances that have no result.

    Raises
    ------
    InconsistentInputError
        If headers and outputs do not describe one study and one model.
    pydantic.ValidationError
        If a value is out of range (e.g. ``threshold`` outside 0..1).

    Examples
    --------
    >>> import numpy
    >>> from pydicom import Dataset
    >>> from worker.formats.types import InstanceOutput
    >>> header = Dataset()
    >>> header.StudyInstanceUID, header.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    >>> header.SOPInstanceUID, header.SOPClassUID = "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"
    >>> output = InstanceOutput("1.2.3.4.5", "lesion-net", "3", 0.9, "lesion",
    ...                         numpy.zeros((32, 32), numpy.float32), 10.0, 20.0, {"infer": 4.0})
    >>> document = build_result_document([header], [output], threshold=0.5)
    >>> document.summary.any_positive, document.summary.max_probability
    (True, 0.9)
    """
    analysed = pair(source_headers, outputs)
    first = analysed[0].output
    instances = tuple(
        InstanceResult(
            study_instance_uid=str(item.header.StudyInstanceUID),
            series_instance_uid=str(item.header.SeriesInstanceUID),
            sop_instance_uid=str(item.header.SOPInstanceUID),
            sop_class_uid=str(item.header.SOPClassUID),
            probability=item.output.probability,
            label=item.output.label,
            threshold=threshold,
            positive=item.output.probability >= threshold,
            peak=PixelLocation(row=item.output.peak_row, column=item.output.peak_col),
            frame_number=analysed_frame_number(item.header),
            timings_ms=dict(item.output.timings_ms),
        )
        for item in analysed
    )
    return ResultDocument(
        study_instance_uid=str(source_headers[0].StudyInstanceUID),
        model=ModelIdentification(name=first.model_name, version=first.model_version),
        created_at=created_at if created_at is not None else datetime.now(UTC),
        threshold=threshold,
        instances=instances,
        summary=summarise(instances),
        structured_reports=() if structured_report is None else (_reference(structured_report),),
        segmentations=tuple(_reference(seg) for seg in segmentations),
        not_analysed=tuple(NotAnalysed(sop_instance_uid=sop, reason=reason[:300]) for sop, reason in not_analysed),
    )
