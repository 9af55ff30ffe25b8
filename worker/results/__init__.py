"""Results of a model run as JSON and as DICOM objects for the PACS.

* :func:`build_result_document` -> :class:`ResultDocument` (JSON, no patient identity);
* :func:`build_sr` -> Comprehensive 3D SR (TID 1500) with per-image probability and peak;
* :func:`build_seg` / :func:`build_segs` -> BINARY Segmentation(s) of the lesion heatmaps;
* :func:`dataset_to_bytes` / :func:`dataset_from_bytes` -> DICOM Part 10 bytes.
"""

from worker.results.document import (
    SCHEMA_VERSION,
    DicomObjectReference,
    InstanceResult,
    ModelIdentification,
    NotAnalysed,
    PixelLocation,
    ResultDocument,
    StudySummary,
    build_result_document,
)
from worker.results.errors import IncompatibleSourcesError, InconsistentInputError, ResultsError
from worker.results.io import dataset_from_bytes, dataset_to_bytes
from worker.results.seg import build_seg, build_segs, upsample_heatmap
from worker.results.sr.sop import build_sr

__all__ = [
    "SCHEMA_VERSION",
    "DicomObjectReference",
    "IncompatibleSourcesError",
    "InconsistentInputError",
    "InstanceResult",
    "ModelIdentification",
    "NotAnalysed",
    "PixelLocation",
    "ResultDocument",
    "ResultsError",
    "StudySummary",
    "build_result_document",
    "build_seg",
    "build_segs",
    "build_sr",
    "dataset_from_bytes",
    "dataset_to_bytes",
    "upsample_heatmap",
]
