"""The adapter's exception tree: every failure of a Triton call is one of these.

Callers can tell "Triton is down, retry later" (:class:`TritonUnavailable`, :class:`ModelNotReady`,
:class:`InferenceTimeout`) from "this request can never succeed" (:class:`ModelMissing`,
:class:`InvalidInput`, :class:`ServerError`). :mod:`worker.inference.triton.client` maps tritonclient's
exceptions onto them.
"""

from __future__ import annotations

from radstream.errors import RadStreamError


class TritonError(RadStreamError):
    """Base of every error raised by the adapter."""

    status_code = 503
    error = "inference_unavailable"


class TritonUnavailable(TritonError):
    """The server cannot be reached (down, restarting, refusing connections). Retrying may help."""


class ModelNotReady(TritonError):
    """The server is up but the model is not ready (loading, unloading, failed to load)."""


class ModelMissing(ModelNotReady):
    """The server does not know this model or version."""


class InferenceTimeout(TritonError):
    """The request did not complete within its deadline."""


class InvalidInput(TritonError):
    """A tensor has the wrong name, datatype or shape for the model."""


class ServerError(TritonError):
    """Triton or the model failed while handling a valid request."""


class ServerFault(ServerError):
    """Triton answered INTERNAL, RESOURCE_EXHAUSTED, ABORTED or UNKNOWN: a fault of the server (out of GPU
    memory, a backend hiccup) that may pass. Retried a few times before the study fails."""
