"""The study SR built with highdicom: the reference that ``worker.results.sr`` must equal.

This is the builder RadStream used before it wrote the report itself (docs/decisions.md): highdicom's
``MeasurementReport`` inside a ``Comprehensive3DSR``, with the Image Library container inserted empty.
"""

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset

from worker.formats.types import InstanceOutput
from worker.models.preprocess import analysed_frame_number
from worker.results import codes
from worker.results._sources import AnalysedInstance, pair
from worker.results.sr.content import IMAGE_LIBRARY, IMAGING_MEASUREMENTS, device_observer_uid, scoord_point


def _measurement_group(
    item: AnalysedInstance, index: int, threshold: float, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    header, output = item.header, item.output
    frame = analysed_frame_number(header)
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=str(header.SOPClassUID),
        referenced_sop_instance_uid=str(header.SOPInstanceUID),
        referenced_frame_numbers=None if frame is None else [frame],
    )
    present = output.probability >= threshold
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Lesion peak {index}"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=scoord_point(output, header),
            source_image=source,
        ),
        finding_type=codes.LESION,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY,
                value=round(output.probability, 6),
                unit=codes.NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.LESION, value=codes.PRESENT if present else codes.ABSENT)
        ],
    )


def build_sr_with_highdicom(
    source_headers: Sequence[Dataset],
    outputs: Sequence[InstanceOutput],
    *,
    threshold: float,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9001,
    instance_number: int = 1,
) -> Dataset:
    analysed = pair(source_headers, outputs)
    first = analysed[0].output
    algorithm = hd.sr.AlgorithmIdentification(name=first.model_name, version=first.model_version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(first.model_name, first.model_version),
            name=first.model_name,
            manufacturer_name=codes.MANUFACTURER,
            model_name=f"{first.model_name} {first.model_version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=[
            _measurement_group(item, index, threshold, algorithm) for index, item in enumerate(analysed, start=1)
        ],
    )
    content = report[0].ContentSequence
    position = next(i for i, item in enumerate(content) if item.name == IMAGING_MEASUREMENTS)
    library = hd.sr.ContainerContentItem(name=IMAGE_LIBRARY, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    content.insert(position, library)
    return hd.sr.Comprehensive3DSR(
        evidence=list(source_headers),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=codes.MANUFACTURER,
        is_complete=True,
        series_description=f"{first.model_name} {first.model_version} results",
    )
