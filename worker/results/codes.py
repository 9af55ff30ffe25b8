"""Coded concepts and fixed identification used in the DICOM objects we write.

All codes are from DICOM (DCM), SNOMED CT (SCT) or UCUM; no private coding
scheme is used, so no Coding Scheme Identification Sequence is needed.
"""

from highdicom.sr import CodedConcept

MANUFACTURER = "RadStream"
"""Manufacturer (0008,0070) of every SR and SEG instance this package writes."""

LESION = CodedConcept(value="52988006", scheme_designator="SCT", meaning="Lesion")
"""Finding type and qualitative evaluation name of each SR measurement group; SEG segment type."""

MORPHOLOGICALLY_ALTERED_STRUCTURE = CodedConcept(
    value="49755003", scheme_designator="SCT", meaning="Morphologically Altered Structure"
)
"""Segmented property category of the SEG segment (CID 7150)."""

ARTIFICIAL_INTELLIGENCE = CodedConcept(value="123110", scheme_designator="DCM", meaning="Artificial Intelligence")
"""Algorithm family (CID 7162) of the model."""

PROBABILITY = CodedConcept(value="122157", scheme_designator="DCM", meaning="Probability")
"""Concept name of the per-image lesion probability measurement."""

NO_UNITS = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
"""Unit of the probability measurement (a ratio in 0..1)."""

# Values of the per-image qualitative evaluation "Lesion: Present/Absent" (TID 1410).
PRESENT = CodedConcept(value="52101004", scheme_designator="SCT", meaning="Present")
ABSENT = CodedConcept(value="2667000", scheme_designator="SCT", meaning="Absent")

IMAGING_PROCEDURE = CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging procedure")
"""Procedure reported in the measurement report (TID 1500 row 5)."""

DEVICE = CodedConcept(value="121007", scheme_designator="DCM", meaning="Device")
"""Observer type of the observation context: the model, not a person."""
