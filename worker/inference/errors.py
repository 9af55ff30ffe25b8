"""Errors of the inference worker's own (the Triton adapter's are in triton/errors.py)."""

from __future__ import annotations

from radstream.errors import RadStreamError
from worker.inference.triton.errors import TritonError


class BatcherClosed(TritonError):
    """The batcher was closed before this image was sent."""


class NoModelForImage(RadStreamError, LookupError):
    """No model spec accepts this image's modality and SOP class."""

    status_code = 404
    error = "no_model"
