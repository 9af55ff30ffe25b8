"""The SR's content tree: coded concepts, content items and the TID 1500 report content.

The items are pydicom datasets in the structure highdicom's ``highdicom.sr`` content classes produce: per
analysed image one TID 1410 planar ROI measurement group (an SCOORD POINT at the heatmap peak on the source
image, the lesion probability as a numeric measurement, a "Lesion: Present/Absent" qualitative
evaluation), under the TID 1500 rows for language, observer context, procedure reported, Image Library and
Imaging Measurements. :mod:`worker.results.sr.sop` puts them into the document.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from highdicom import UID
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from worker.formats.types import InstanceOutput
from worker.models.preprocess import analysed_frame_number
from worker.results import codes
from worker.results._sources import AnalysedInstance
from worker.results.sr.encoded import Item


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator="DCM", meaning=meaning)


IMAGE_LIBRARY = _dcm("111028", "Image Library")
IMAGING_MEASUREMENTS = _dcm("126010", "Imaging Measurements")
_REPORT = _dcm("126000", "Imaging Measurement Report")
_LANGUAGE = _dcm("121049", "Language of Content Item and Descendants")
_ENGLISH_US = CodedConcept(value="en-US", scheme_designator="RFC5646", meaning="English (United States)")
_OBSERVER_TYPE = _dcm("121005", "Observer Type")
_DEVICE_OBSERVER_UID = _dcm("121012", "Device Observer UID")
_DEVICE_OBSERVER_NAME = _dcm("121013", "Device Observer Name")
_DEVICE_OBSERVER_MANUFACTURER = _dcm("121014", "Device Observer Manufacturer")
_DEVICE_OBSERVER_MODEL_NAME = _dcm("121015", "Device Observer Model Name")
_PROCEDURE_REPORTED = _dcm("121058", "Procedure reported")
_MEASUREMENT_GROUP = _dcm("125007", "Measurement Group")
_TRACKING_IDENTIFIER = _dcm("112039", "Tracking Identifier")
_TRACKING_UID = _dcm("112040", "Tracking Unique Identifier")
_FINDING = _dcm("121071", "Finding")
_ALGORITHM_NAME = _dcm("111001", "Algorithm Name")
_ALGORITHM_VERSION = _dcm("111003", "Algorithm Version")
_IMAGE_REGION = _dcm("111030", "Image Region")
_SOURCE = CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")


def device_observer_uid(model_name: str, model_version: str) -> str:
    """Return a stable Device Observer UID for one model name/version."""
    return str(generate_uid(entropy_srcs=["radstream-model", model_name, model_version]))


def scoord_point(output: InstanceOutput, header: Dataset) -> npt.NDArray[np.float64]:
    """Return the peak as SCOORD graphic data ``[[column, row]]``.

    ``peak_row``/``peak_col`` are array indices with pixel centres at
    integers; SCOORD puts the top-left corner of the top-left pixel at
    (0, 0), so the centre of pixel (r, c) is (c + 0.5, r + 0.5). The point is
    clipped to the image.
    """
    column = min(max(output.peak_col + 0.5, 0.0), float(header.Columns))
    row = min(max(output.peak_row + 0.5, 0.0), float(header.Rows))
    return np.array([[column, row]], dtype=np.float64)


# --- content items ------------------------------------------------------------------------------------


def _code(concept: CodedConcept) -> Dataset:
    """A code sequence item as a pydicom dataset (for the attributes pydicom builds around the content)."""
    item = Dataset()
    item.CodeValue = concept.CodeValue
    item.CodingSchemeDesignator = concept.CodingSchemeDesignator
    if "CodingSchemeVersion" in concept:
        item.CodingSchemeVersion = concept.CodingSchemeVersion
    item.CodeMeaning = concept.CodeMeaning
    return item


def _coded(concept: CodedConcept) -> Item:
    """A code sequence item of the content tree."""
    version = concept.get("CodingSchemeVersion")
    return _coded_item(concept.CodeValue, concept.CodingSchemeDesignator, version, concept.CodeMeaning)


@lru_cache(maxsize=128)
def _coded_item(value: str, scheme: str, version: str | None, meaning: str) -> Item:
    """One item per code: the groups of a report share them (items are not changed once built)."""
    item = Item(CodeValue=value, CodingSchemeDesignator=scheme)
    if version is not None:
        item["CodingSchemeVersion"] = version
    item["CodeMeaning"] = meaning
    return item


def _item(relationship: str | None, value_type: str, name: CodedConcept, **values: Any) -> Item:
    item = Item(ValueType=value_type, ConceptNameCodeSequence=[_coded(name)], **values)
    if relationship is not None:
        item["RelationshipType"] = relationship
    return item


def _code_item(relationship: str, name: CodedConcept, value: CodedConcept) -> Item:
    return _item(relationship, "CODE", name, ConceptCodeSequence=[_coded(value)])


def _text_item(relationship: str, name: CodedConcept, text: str) -> Item:
    return _item(relationship, "TEXT", name, TextValue=text)


def _uid_item(relationship: str, name: CodedConcept, uid: str) -> Item:
    return _item(relationship, "UIDREF", name, UID=uid)


def _container(relationship: str | None, name: CodedConcept, template: str | None = None) -> Item:
    item = _item(relationship, "CONTAINER", name, ContinuityOfContent="CONTINUOUS")
    if template is not None:
        item["ContentTemplateSequence"] = [Item(MappingResource="DCMR", TemplateIdentifier=template)]
    return item


def _algorithm(name: str, version: str) -> list[Item]:
    """TID 4019 Algorithm Identification."""
    return [
        _text_item("HAS CONCEPT MOD", _ALGORITHM_NAME, name),
        _text_item("HAS CONCEPT MOD", _ALGORITHM_VERSION, version),
    ]


def _measurement_group(
    item: AnalysedInstance, index: int, threshold: float, algorithm: list[Item], finding: Item
) -> Item:
    """TID 1410 Planar ROI Measurements and Qualitative Evaluations, for one image (``algorithm`` and
    ``finding``: the items every group shares)."""
    header, output = item.header, item.output
    probability = round(output.probability, 6)

    measured = Item(
        MeasurementUnitsCodeSequence=[_coded(codes.NO_UNITS)],
        NumericValue=str(DS(probability, auto_format=True)),
        FloatingPointValue=probability,
    )
    measurement = _item("CONTAINS", "NUM", codes.PROBABILITY, MeasuredValueSequence=[measured])
    measurement["ContentSequence"] = algorithm

    image = Item(ReferencedSOPClassUID=str(header.SOPClassUID), ReferencedSOPInstanceUID=str(header.SOPInstanceUID))
    frame = analysed_frame_number(header)
    if frame is not None:  # the point is on the frame the model saw (Image Reference Macro, type 1C)
        image["ReferencedFrameNumber"] = str(frame)
    source = _item("SELECTED FROM", "IMAGE", _SOURCE, ReferencedSOPSequence=[image])
    region = _item("CONTAINS", "SCOORD", _IMAGE_REGION, ContentSequence=[source], GraphicType="POINT")
    region["GraphicData"] = [float(v) for v in scoord_point(output, header).flatten()]

    group = _container("CONTAINS", _MEASUREMENT_GROUP, template="1410")
    group["ContentSequence"] = [
        _text_item("HAS OBS CONTEXT", _TRACKING_IDENTIFIER, f"Lesion peak {index}"),
        _uid_item("HAS OBS CONTEXT", _TRACKING_UID, str(UID())),
        finding,
        *algorithm,
        measurement,
        _code_item("CONTAINS", codes.LESION, codes.PRESENT if output.probability >= threshold else codes.ABSENT),
        region,
    ]
    return group


def _report_content(analysed: list[AnalysedInstance], threshold: float) -> list[Item]:
    """The root container's items: TID 1500 rows 2-6 (language, observer, procedure, library, measurements)."""
    first = analysed[0].output
    name, version = first.model_name, first.model_version
    algorithm, finding = _algorithm(name, version), _code_item("CONTAINS", _FINDING, codes.LESION)
    measurements = _container("CONTAINS", IMAGING_MEASUREMENTS)
    measurements["ContentSequence"] = [
        _measurement_group(item, index, threshold, algorithm, finding) for index, item in enumerate(analysed, start=1)
    ]
    return [
        _code_item("HAS CONCEPT MOD", _LANGUAGE, _ENGLISH_US),
        # TID 1002 Observer Context, TID 1004 Device Observer Identifying Attributes
        _code_item("HAS OBS CONTEXT", _OBSERVER_TYPE, codes.DEVICE),
        _uid_item("HAS OBS CONTEXT", _DEVICE_OBSERVER_UID, device_observer_uid(name, version)),
        _text_item("HAS OBS CONTEXT", _DEVICE_OBSERVER_NAME, name),
        _text_item("HAS OBS CONTEXT", _DEVICE_OBSERVER_MANUFACTURER, codes.MANUFACTURER),
        _text_item("HAS OBS CONTEXT", _DEVICE_OBSERVER_MODEL_NAME, f"{name} {version}"),
        _code_item("HAS CONCEPT MOD", _PROCEDURE_REPORTED, codes.IMAGING_PROCEDURE),
        _container("CONTAINS", IMAGE_LIBRARY),
        measurements,
    ]
