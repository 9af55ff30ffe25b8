"""Errors of the model specs and their preprocessing."""

from __future__ import annotations

from radstream.errors import RadStreamError


class SpecError(RadStreamError, ValueError):
    """A spec file is unreadable, invalid, or does not match its folder."""

    error = "invalid_model_spec"


class PreprocessError(RadStreamError, ValueError):
    """The file is not DICOM, has no image, or its pixel data cannot be decoded."""

    status_code = 400
    error = "cannot_preprocess"
