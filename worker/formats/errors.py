"""Typed pipeline errors. Their class names are the Step Functions error names that Retry/Catch match:
a Lambda stage raises them, the inference worker fails its task with them."""

from __future__ import annotations

from radstream.errors import RadStreamError


class PipelineError(RadStreamError):
    """A stage failed for a reason that retrying will not fix."""

    error = "pipeline_error"


class TransientError(PipelineError):
    """A stage failed for a reason that may pass (storage hiccup, object not visible yet): Retry."""


class ManifestInvalid(PipelineError):
    pass


class InstanceMissing(TransientError):
    """The manifest names an instance the object store does not (yet) return."""


class DecodeFailed(PipelineError):
    """No instance of the study could be decoded or preprocessed for the model (the worker answers the
    inference task with this name when every batch of PrepareTensors came back empty)."""


class InferenceUnavailable(PipelineError):
    """Triton stayed unavailable for the worker's whole retry budget."""


class InferenceFailed(PipelineError):
    """The model rejected the input or the server failed."""


class InvalidMessage(PipelineError):
    """A queue message is not a RunInference message (worker/formats/task.py)."""


class InternalError(PipelineError):
    """An exception the stage did not expect. Its message is left out (see :func:`describe`): messages of
    DICOM libraries quote element values, patient names and birth dates among them."""


class ExportUnavailableError(PipelineError):
    """An export destination is not answering now (refused, timed out, busy): the state machine retries."""


class ExportRefusedError(PipelineError):
    """An export destination refused the objects, or is not configured: the destination fails at once."""


class ExportGaveUp(PipelineError):
    """An export destination did not answer within the retry budget: not retried again."""
