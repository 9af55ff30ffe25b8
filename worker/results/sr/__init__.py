"""DICOM Structured Report (TID 1500 Measurement Report) of one study's results.

The report is a Comprehensive 3D SR for the PACS. Per analysed image it holds
one planar ROI measurement group (TID 1410) whose region is an SCOORD POINT at
the heatmap peak on the source image, with the lesion probability as a
numeric measurement and a "Lesion: Present/Absent" qualitative evaluation.
Patient and study attributes are copied from the first source image (the root
attributes of its IOD's Patient and Study modules, as highdicom copies them).

The Image Library (TID 1500 row 5, TID 1600) is present, as the template requires, but holds no image
groups: those are optional, and every image is already referenced by its measurement group and in the
evidence.

The dataset is written in this package with pydicom, item by item, in the structure highdicom's
``Comprehensive3DSR(MeasurementReport(...))`` produces: ``tests/results/reference_sr.py`` builds the
same report with highdicom and the tests require both to be equal, attribute for attribute (generated
UIDs, creation times and the software item of the Contributing Equipment aside). highdicom's builder
deep-copies and re-parses the whole content tree and looks attributes up in the standard's IOD tables:
building a one-image report took 12.8 ms with it and takes 2.6 ms here (50 images: 316 -> 71 ms); encoding
is pydicom's either way (3.8 ms). See docs/decisions.md.

The package follows highdicom's layout for an object type: :mod:`~worker.results.sr.content` builds the
content tree (coded concepts, content items, the TID 1410 measurement groups and the TID 1500 rows),
:mod:`~worker.results.sr.sop` the SOP instance around it (:func:`build_sr`).
"""

from worker.results.sr.content import IMAGE_LIBRARY, IMAGING_MEASUREMENTS, device_observer_uid, scoord_point
from worker.results.sr.sop import DEFAULT_SR_SERIES_NUMBER, build_sr

__all__ = [
    "DEFAULT_SR_SERIES_NUMBER",
    "IMAGE_LIBRARY",
    "IMAGING_MEASUREMENTS",
    "build_sr",
    "device_observer_uid",
    "scoord_point",
]
