"""Errors raised while turning model outputs into result objects.

Every error derives from :class:`ResultsError` so a caller (the worker's job
runner) can tell a bad input to this layer apart from an infrastructure
failure and fail the job instead of retrying it.
"""

from __future__ import annotations

from radstream.errors import RadStreamError


class ResultsError(RadStreamError):
    """Base class of every error raised by :mod:`worker.results`."""


class InconsistentInputError(ResultsError, ValueError):
    """Source headers and model outputs do not describe one study and one model.

    Raised, for example, when an output names a SOP instance that is not among
    the source headers, when two outputs name the same instance, when the
    source headers span several studies, or when the outputs come from more
    than one model name/version.
    """


class IncompatibleSourcesError(ResultsError, ValueError):
    """Source images cannot share one Segmentation instance.

    A Segmentation references images of one series with the same frame of
    reference and the same geometry (rows, columns, orientation, spacing);
    images without a patient coordinate system (e.g. CR/DX projections) can
    only be segmented one image per instance. Use
    :func:`worker.results.build_segs` to group the images first.
    """
