"""What the inference worker answers the state machine when inference raised: a typed pipeline error to fail
the task with, or nothing (leave the message for redelivery: Triton or storage may be back by then)."""

from __future__ import annotations

import logging

from radstream.errors import NotFound, StorageUnavailable, frames
from radstream.errors import describe as where
from worker.formats.errors import InferenceFailed, InferenceUnavailable, PipelineError
from worker.inference.triton.errors import InferenceTimeout, ModelNotReady, TritonError, TritonUnavailable

log = logging.getLogger("radstream.worker")

UNAVAILABLE = (TritonUnavailable, InferenceTimeout, ModelNotReady, StorageUnavailable)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def failure_for(exc: Exception, *, study: str, receives: int, max_attempts: int) -> PipelineError | None:
    """The error to fail the task with; None while a server that is away has attempts left.

    * Triton (or storage) unavailable: retried by redelivery; after ``max_attempts`` receives the study fails
      with ``InferenceUnavailable`` instead of waiting forever.
    * An error the worker knows (Triton refused, an object missing, a malformed object): ``InferenceFailed``.
    * Anything else, a bug or a failure nobody foresaw: ``InferenceFailed`` with the class and place only
      (its message may quote DICOM values), logged with the traceback; the study still learns why.
    """
    if isinstance(exc, UNAVAILABLE):
        if receives >= max_attempts:
            return InferenceUnavailable(f"Triton unavailable after {receives} attempts: {describe(exc)}")
        log.warning("study %s: %s; will retry (attempt %d)", study, type(exc).__name__, receives)
        return None
    if isinstance(exc, (TritonError, NotFound, ValueError, KeyError)):
        return InferenceFailed(describe(exc))
    log.error("study %s: unexpected %s during inference\n%s", study, where(exc), frames(exc))
    return InferenceFailed(where(exc))
