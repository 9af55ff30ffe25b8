"""DICOM Segmentation (BINARY) of the lesion heatmaps.

Each analysed image's heatmap (model output resolution, e.g. 32x32) is
upsampled bilinearly to the image's Rows x Columns and thresholded; images the
model calls negative (probability below the threshold) get an empty frame,
which highdicom omits. A Segmentation covers single-frame images that share
geometry:

* images with a patient coordinate system (FrameOfReferenceUID and
  ImagePositionPatient, e.g. CT/MR slices) are grouped by series, frame of
  reference, rows/columns, orientation and pixel spacing; highdicom takes the
  plane positions from the source images;
* projection images without one (CR/DX, secondary captures) have no plane
  position; highdicom accepts them as a single source image whose frame is
  pixel-aligned with it, so each such image gets its own Segmentation.

Multi-frame source images are not segmented.
"""

from collections.abc import Hashable, Sequence
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from worker.formats.types import InstanceOutput
from worker.results import codes
from worker.results._sources import AnalysedInstance, pair, with_type2_defaults
from worker.results.errors import IncompatibleSourcesError

DEFAULT_SEG_SERIES_NUMBER = 9002
DEVICE_SERIAL_NUMBER = "radstream-worker"
SEGMENT_LABEL = "Lesion"


def upsample_heatmap(heatmap: npt.NDArray[np.floating[Any]], rows: int, columns: int) -> npt.NDArray[np.float32]:
    """Resize a 2D heatmap to ``rows`` x ``columns`` by bilinear interpolation.

    Pixel centres are aligned (like ``align_corners=False``); values beyond the
    outermost centres are taken from the edge. Returns float32.

    >>> upsample_heatmap(np.array([[0.0, 1.0]], dtype=np.float32), 1, 4).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
    """
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2D array, got shape {heatmap.shape}")
    source = heatmap.astype(np.float32, copy=False)
    height, width = source.shape

    def axis(out_size: int, in_size: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        centres = (np.arange(out_size, dtype=np.float64) + 0.5) * in_size / out_size - 0.5
        centres = np.clip(centres, 0.0, in_size - 1)
        low = np.floor(centres).astype(np.intp)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (centres - low).astype(np.float32)

    r0, r1, fr = axis(rows, height)
    c0, c1, fc = axis(columns, width)
    top = source[r0][:, c0] * (1 - fc) + source[r0][:, c1] * fc
    bottom = source[r1][:, c0] * (1 - fc) + source[r1][:, c1] * fc
    result: npt.NDArray[np.float32] = (top * (1 - fr)[:, None] + bottom * fr[:, None]).astype(np.float32)
    return result


def lesion_mask(output: InstanceOutput, header: Dataset, threshold: float) -> npt.NDArray[np.bool_]:
    """Return the boolean lesion mask of one image at its Rows x Columns.

    Empty when the image's probability is below ``threshold``.
    """
    shape = (int(header.Rows), int(header.Columns))
    if output.probability < threshold:
        return np.zeros(shape, dtype=bool)
    mask: npt.NDArray[np.bool_] = upsample_heatmap(output.heatmap, *shape) >= threshold
    return mask


def _has_mask(output: InstanceOutput) -> bool:
    return output.heatmap.ndim == 2 and output.heatmap.size > 0


def _is_multiframe(header: Dataset) -> bool:
    return int(header.get("NumberOfFrames", 1) or 1) > 1


def geometry_key(header: Dataset) -> Hashable:
    """Key under which single-frame images can share one Segmentation."""
    if hd.spatial.get_image_coordinate_system(header) is None:
        return ("single", str(header.SOPInstanceUID))
    return (
        "volume",
        str(header.SeriesInstanceUID),
        str(header.FrameOfReferenceUID),
        int(header.Rows),
        int(header.Columns),
        tuple(round(float(v), 4) for v in header.get("ImageOrientationPatient", [])),
        tuple(round(float(v), 4) for v in header.get("PixelSpacing", [])),
    )


def _segment(model_name: str, model_version: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ALTERED_STRUCTURE,
        segmented_property_type=codes.LESION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name, family=codes.ARTIFICIAL_INTELLIGENCE, version=model_version
        ),
    )


def build_seg(
    source_headers: Sequence[Dataset],
    outputs: Sequence[InstanceOutput],
    threshold: float,
    *,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SEG_SERIES_NUMBER,
    instance_number: int = 1,
) -> Dataset | None:
    """Build one BINARY Segmentation with segment "Lesion" for images sharing geometry.

    Only the source headers that have an output are segmented. They must all
    have the same :func:`geometry_key` (see the module docstring); use
    :func:`build_segs` for a whole study.

    Returns
    -------
    pydicom.Dataset | None
        A :class:`highdicom.seg.Segmentation` (pixel-aligned with its source
        images, empty frames omitted), or ``None`` when no mask is possible:
        no output has a 2D heatmap, a source is multi-frame, or no pixel
        reaches ``threshold`` on a positive image.

    Raises
    ------
    InconsistentInputError
        If headers and outputs do not describe one study and one model.
    IncompatibleSourcesError
        If the analysed images cannot share one Segmentation.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is outside 0..1")
    analysed = [item for item in pair(source_headers, outputs) if _has_mask(item.output)]
    if not analysed or any(_is_multiframe(item.header) for item in analysed):
        return None
    keys = {geometry_key(item.header) for item in analysed}
    if len(keys) != 1:
        raise IncompatibleSourcesError(f"the analysed images fall into {len(keys)} geometry groups; use build_segs")
    masks = np.stack([lesion_mask(item.output, item.header, threshold) for item in analysed])
    if not masks.any():
        return None
    first = analysed[0].output
    seg = hd.seg.Segmentation(
        source_images=[with_type2_defaults(item.header) for item in analysed],
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(first.model_name, first.model_version)],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=instance_number,
        manufacturer=codes.MANUFACTURER,
        manufacturer_model_name=first.model_name,
        software_versions=first.model_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        series_description=f"{first.model_name} {first.model_version} lesion mask"[:64],  # LO
    )
    source = analysed[0].header
    if hd.spatial.get_image_coordinate_system(source) is None:
        # General Image module, type 2C: required without a patient position and
        # orientation. The frame is pixel-aligned with the source, so its
        # orientation is the source's.
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def group_for_segmentation(
    source_headers: Sequence[Dataset], outputs: Sequence[InstanceOutput]
) -> list[list[AnalysedInstance]]:
    """Split the analysed single-frame images into groups that can share a Segmentation."""
    groups: dict[Hashable, list[AnalysedInstance]] = {}
    for item in pair(source_headers, outputs):
        if _has_mask(item.output) and not _is_multiframe(item.header):
            groups.setdefault(geometry_key(item.header), []).append(item)
    return list(groups.values())


def build_segs(
    source_headers: Sequence[Dataset],
    outputs: Sequence[InstanceOutput],
    threshold: float,
    *,
    series_instance_uid: str | None = None,
    series_number: int = DEFAULT_SEG_SERIES_NUMBER,
) -> list[Dataset]:
    """Build the Segmentations of a study: one per geometry group that has a mask.

    All instances go into one new series (numbered from 1). Groups without a
    positive pixel produce nothing, so the list may be empty.
    """
    series_uid = series_instance_uid or hd.UID()
    segmentations: list[Dataset] = []
    for group in group_for_segmentation(source_headers, outputs):
        seg = build_seg(
            [item.header for item in group],
            [item.output for item in group],
            threshold,
            series_instance_uid=series_uid,
            series_number=series_number,
            instance_number=len(segmentations) + 1,
        )
        if seg is not None:
            segmentations.append(seg)
    return segmentations
