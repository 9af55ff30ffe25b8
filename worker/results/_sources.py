"""Pairing of source image headers with the model output for each of them."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.valuerep import DA, TM

from worker.formats.types import InstanceOutput
from worker.results.errors import InconsistentInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysedInstance:
    """A source image header together with the model output computed for it."""

    header: Dataset
    output: InstanceOutput


# Type 2 attributes of the Patient and General Study modules that highdicom reads from the first source image
# (and fails without): a source that lacks one gives the derived object an empty value instead.
TYPE2_PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _refused_by_highdicom(keyword: str, value: object) -> bool:
    """Whether highdicom would refuse this Patient/Study value when it copies it into a derived object."""
    if value is None or value == "":
        return False
    convert = _CONVERTED.get(keyword)
    if convert is not None:
        try:
            convert(value)
        except (ValueError, TypeError):
            return True
        return False
    if keyword == "PatientSex":
        return str(value) not in ("M", "F", "O")
    return False


_CONVERTED = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}


def with_type2_defaults(header: Dataset) -> Dataset:
    """``header``, or a shallow copy of it in which the :data:`TYPE2_PATIENT_AND_STUDY` attributes that are
    missing, or whose value highdicom would refuse (a date written 1961-04-07, a PatientSex of "U"), are
    empty. Sources carry such values; refusing them would fail the study's results. What was emptied is
    logged by keyword, never by value."""
    missing = [keyword for keyword in TYPE2_PATIENT_AND_STUDY if keyword not in header]
    refused = [k for k in TYPE2_PATIENT_AND_STUDY if k in header and _refused_by_highdicom(k, header[k].value)]
    if not missing and not refused:
        return header
    copy = Dataset()
    copy.update(header)  # Dataset(header) would share the original's elements dict
    for keyword in refused:
        log.warning("%s of a source image is not a valid value; left empty in the derived objects", keyword)
        delattr(copy, keyword)  # the element itself is the original's: replace it, never change it
    for keyword in missing + refused:
        setattr(copy, keyword, None)
    return copy


def _positional(source_headers: Sequence[Dataset], outputs: Sequence[InstanceOutput]) -> bool:
    """Whether output i is for header i, for every i: the pipeline passes them so (each output travels with
    its source's header), and then one SOP Instance UID may be repeated in two series."""
    return len(source_headers) == len(outputs) and all(
        str(header.SOPInstanceUID) == output.sop_instance_uid
        for header, output in zip(source_headers, outputs, strict=True)
    )


def check_inputs(source_headers: Sequence[Dataset], outputs: Sequence[InstanceOutput]) -> None:
    """Check that headers and outputs describe one study analysed by one model.

    Outputs given in the order of their headers (output i for header i) are paired by position; one SOP
    Instance UID may then appear in two series (senders do repeat them), each with its own output.

    Raises
    ------
    InconsistentInputError
        If there are no headers or outputs, the headers span several studies
        or repeat a SOP instance of one series, an output names an unknown or
        (outside positional pairing) repeated SOP instance, or the outputs come
        from several model names/versions.
    """
    if not source_headers:
        raise InconsistentInputError("no source headers given")
    if not outputs:
        raise InconsistentInputError("no model outputs given")
    studies = {str(header.StudyInstanceUID) for header in source_headers}
    if len(studies) != 1:
        raise InconsistentInputError(f"source headers span {len(studies)} studies; expected one")
    instances = [(str(h.get("SeriesInstanceUID", "")), str(h.SOPInstanceUID)) for h in source_headers]
    if len(set(instances)) != len(instances):
        raise InconsistentInputError("a SOP instance appears more than once among the source headers")
    header_uids = {sop for _, sop in instances}
    output_uids = [output.sop_instance_uid for output in outputs]
    if not _positional(source_headers, outputs):
        if len(header_uids) != len(instances):
            raise InconsistentInputError("a SOP Instance UID repeated in two series needs outputs in header order")
        if len(set(output_uids)) != len(output_uids):
            raise InconsistentInputError("a SOP instance has more than one model output")
    unknown = sorted(set(output_uids) - header_uids)
    if unknown:
        raise InconsistentInputError(f"model outputs for SOP instances without a source header: {unknown}")
    models = {(output.model_name, output.model_version) for output in outputs}
    if len(models) != 1:
        raise InconsistentInputError(f"outputs come from {len(models)} model name/version pairs; expected one")
    for output in outputs:
        if not 0.0 <= output.probability <= 1.0:
            raise InconsistentInputError(
                f"probability {output.probability} of {output.sop_instance_uid} is outside 0..1"
            )


def pair(source_headers: Sequence[Dataset], outputs: Sequence[InstanceOutput]) -> list[AnalysedInstance]:
    """Return one :class:`AnalysedInstance` per output, in source header order.

    Source headers without an output (an instance the model did not analyse)
    are left out. Inputs are checked with :func:`check_inputs` first.
    """
    check_inputs(source_headers, outputs)
    if _positional(source_headers, outputs):
        return [AnalysedInstance(header=h, output=o) for h, o in zip(source_headers, outputs, strict=True)]
    by_uid = {output.sop_instance_uid: output for output in outputs}
    return [
        AnalysedInstance(header=header, output=by_uid[str(header.SOPInstanceUID)])
        for header in source_headers
        if str(header.SOPInstanceUID) in by_uid
    ]
