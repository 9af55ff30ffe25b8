"""The SR document: a Comprehensive 3D SR instance (SOP-level attributes) around the report content.

Patient and study attributes are copied from the first source image (the root attributes of its IOD's
Patient and Study modules, as highdicom copies them); the Contributing Equipment Sequence names the first
source image's acquisition equipment and RadStream; every source is referenced as evidence. The content
tree comes from :mod:`worker.results.sr.content`.
"""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
from collections.abc import Sequence
from functools import lru_cache

from highdicom import UID, ContributingEquipment
from highdicom._standard_utils import (
    does_iod_have_pixel_data,
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
)
from pydicom.valuerep import DA, DT, TM

from worker.formats.types import InstanceOutput
from worker.results import codes
from worker.results._sources import TYPE2_PATIENT_AND_STUDY, pair
from worker.results.sr.content import _REPORT, _code, _container, _dcm, _report_content
from worker.results.sr.encoded import character_set, mark_explicit_little, raw_sequence, to_dataset

DEFAULT_SR_SERIES_NUMBER = 9001

_ACQUISITION_EQUIPMENT = _dcm("109101", "Acquisition Equipment")
_PROCESSING_EQUIPMENT = _dcm("109102", "Processing Equipment")


# --- document attributes ------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _patient_and_study_tags(sop_class_uid: str) -> tuple[int, ...]:
    """Root attributes of the Patient and Study modules of the source's IOD (highdicom's tables)."""
    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    attributes = get_module_attribute_map()
    tags = []
    for module in modules:
        if module["ie"] in ("Patient", "Study"):
            for attribute in attributes[module["key"]]:
                tag = tag_for_keyword(str(attribute["keyword"]))
                if len(attribute["path"]) == 0 and tag is not None:
                    tags.append(tag)
    return tuple(tags)


def _copy_patient_and_study(sr: Dataset, source: Dataset) -> None:
    for keyword in TYPE2_PATIENT_AND_STUDY:  # empty when the source lacks one
        setattr(sr, keyword, source.get(keyword))
    try:
        tags = _patient_and_study_tags(str(source.SOPClassUID))
    except KeyError:  # a SOP class without an IOD in highdicom's tables: the attributes above only
        return
    for tag in tags:
        if tag in source:
            sr.add(copy.deepcopy(source[tag]))  # not the source's element: changing one must not change both


@lru_cache(maxsize=1)
def _software_version() -> str:
    try:
        return importlib.metadata.version("radstream")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


@lru_cache(maxsize=64)
def _is_image(sop_class_uid: str) -> bool:
    try:
        return does_iod_have_pixel_data(sop_class_uid)
    except (KeyError, ValueError):
        return False


def _acquisition_equipment(source: Dataset) -> Dataset | None:
    """The first source image's acquisition equipment, as highdicom records it: only for an image that
    names a manufacturer, and left out when a value it would copy is not valid (length, backslash)."""
    manufacturer = source.get("Manufacturer")
    if not manufacturer or not _is_image(str(source.SOPClassUID)):
        return None
    when = source.get("AcquisitionDateTime")
    date, time = source.get("AcquisitionDate"), source.get("AcquisitionTime")
    if when is None and isinstance(date, datetime.date) and isinstance(time, datetime.time):
        when = datetime.datetime.combine(date, time)
    try:
        return ContributingEquipment(
            manufacturer=str(manufacturer),
            purpose_of_reference=_ACQUISITION_EQUIPMENT,
            manufacturer_model_name=source.get("ManufacturerModelName"),
            software_versions=source.get("SoftwareVersions"),
            device_serial_number=source.get("DeviceSerialNumber"),
            institution_name=source.get("InstitutionName"),
            institutional_department_name=source.get("InstitutionalDepartmentName"),
            institution_address=source.get("InstitutionAddress"),
            station_name=source.get("StationName"),
            contribution_datetime=when,
            contribution_description="Acquisition equipment of the source image(s)",
        )
    except (ValueError, TypeError):
        return None


def _contributing_equipment(source: Dataset, now: datetime.datetime) -> list[Dataset]:
    """The acquisition equipment of the first source image (see above), and us."""
    items: list[Dataset] = []
    acquisition = _acquisition_equipment(source)
    if acquisition is not None:
        items.append(acquisition)
    software = Dataset()
    software.Manufacturer = codes.MANUFACTURER
    software.PurposeOfReferenceCodeSequence = [_code(_PROCESSING_EQUIPMENT)]
    software.ManufacturerModelName = "RadStream"
    software.SoftwareVersions = _software_version()
    software.ContributionDateTime = DT(now)
    software.ContributionDescription = "Software that created this instance"
    items.append(software)
    return items


def _evidence(headers: Sequence[Dataset], study_uid: str) -> tuple[list[Dataset], list[Dataset]]:
    """(Current Requested Procedure Evidence, Pertinent Other Evidence): every source, by study and series."""
    groups: dict[tuple[str, str], list[Dataset]] = {}
    seen: set[tuple[str, str]] = set()
    for header in headers:
        instance = (str(header.SeriesInstanceUID), str(header.SOPInstanceUID))
        if instance in seen:
            continue
        seen.add(instance)
        reference = Dataset()
        reference.ReferencedSOPClassUID = header.SOPClassUID
        reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
        groups.setdefault((str(header.StudyInstanceUID), str(header.SeriesInstanceUID)), []).append(reference)
    studies: dict[str, list[Dataset]] = {}
    for (study, series), references in groups.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series
        series_item.ReferencedSOPSequence = references
        studies.setdefault(study, []).append(series_item)
    same: list[Dataset] = []
    other: list[Dataset] = []
    for study, series_items in studies.items():
        study_item = Dataset()
        study_item.StudyInstanceUID = study
        study_item.ReferencedSeriesSequence = series_items
        (same if study == study_uid else other).append(study_item)
    return same, other


def build_sr(
    source_headers: Sequence[Dataset],
    outputs: Sequence[InstanceOutput],
    *,
    threshold: float,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SR_SERIES_NUMBER,
    instance_number: int = 1,
) -> Dataset:
    """Build a Comprehensive 3D SR (TID 1500) with the model's results for one study.

    Parameters
    ----------
    source_headers:
        Headers of the study's source images (pixel data not needed). Every
        header is recorded as evidence; the first one gives the patient and study
        attributes.
    outputs:
        One model output per analysed source image, all from one model.
    threshold:
        Probability at or above which the finding is recorded as present.
    series_instance_uid, sop_instance_uid:
        UIDs of the new SR series and instance; generated when not given.

    Returns
    -------
    pydicom.Dataset
        A Comprehensive 3D SR in a new series, with manufacturer ``"RadStream"``, marked complete,
        unverified and preliminary.

    Raises
    ------
    InconsistentInputError
        If headers and outputs do not describe one study and one model.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside 0..1")
    analysed = pair(source_headers, outputs)
    first, source = analysed[0].output, source_headers[0]
    now = datetime.datetime.now()

    sr = Dataset()
    charset = source.get("SpecificCharacterSet")
    if charset:  # the source's own repertoire, which its copied names are in; an empty one is left out
        sr.SpecificCharacterSet = charset
    sr.SOPClassUID = Comprehensive3DSRStorage
    sr.SOPInstanceUID = str(sop_instance_uid or UID())
    sr.file_meta = FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    sr.InstanceCreationDate = DA(now.date())
    sr.InstanceCreationTime = TM(now.time())
    sr.ContentDate = DA(now.date())
    sr.ContentTime = TM(now.time())
    sr.InstanceNumber = instance_number
    sr.Modality = "SR"
    sr.Manufacturer = codes.MANUFACTURER
    sr.SeriesInstanceUID = str(series_instance_uid or UID())
    sr.SeriesNumber = series_number
    sr.SeriesDescription = f"{first.model_name} {first.model_version} results"[:64]  # LO
    sr.StudyInstanceUID = str(source.StudyInstanceUID)
    _copy_patient_and_study(sr, source)
    sr.ContributingEquipmentSequence = _contributing_equipment(source, now)
    sr.ReferencedPerformedProcedureStepSequence = []
    sr.PerformedProcedureCodeSequence = []

    same_study, other_study = _evidence(source_headers, sr.StudyInstanceUID)
    if same_study:
        sr.CurrentRequestedProcedureEvidenceSequence = same_study
    if other_study:
        sr.PertinentOtherEvidenceSequence = other_study
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.PreliminaryFlag = "PRELIMINARY"

    charset = character_set(sr)
    root = _container(None, _REPORT, template="1500")  # the document root has no relationship type
    for element in to_dataset(root, charset):
        sr.add(element)
    # the content tree, encoded as it is built (worker/results/sr/encoded.py): pydicom writes the raw
    # element as it is when the document is marked as Explicit VR Little Endian in its own character set
    content = raw_sequence("ContentSequence", _report_content(analysed, threshold), charset)
    sr[content.tag] = content
    mark_explicit_little(sr)
    return sr
