"""Export of result objects (SR, SEG) to the tenants' DICOMweb and DIMSE destinations."""
