"""What the AWS SDK raises, as RadStream's errors: one translation for every adapter of this package.

No error classes are defined here (they are in :mod:`radstream.errors`, the one tree): a call that got no
answer, a 5xx or a throttling answer is :class:`~radstream.errors.StorageUnavailable` (retry later); any
other refusal is :class:`~radstream.errors.StorageError` (do not retry).
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from radstream.errors import StorageError, StorageUnavailable

_UNAVAILABLE_CODES = frozenset({"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "503"})
# DynamoDB's throttling answers are 400s, but what they say is "retry later", as a 503 does.
THROTTLING_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError (``Error.Code``); empty for anything else."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def is_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (EndpointConnectionError, BotoCoreError, OSError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in _UNAVAILABLE_CODES | THROTTLING_CODES or status >= 500
    return False


def translate(exc: Exception, what: str) -> Exception:
    """Map a boto exception onto StorageUnavailable (retry later: no answer, a 5xx, or throttled once the
    SDK's own retries were spent) or StorageError (do not retry)."""
    if error_code(exc) in THROTTLING_CODES:
        return StorageUnavailable(f"storage unavailable during {what}: throttled ({error_code(exc)})")
    if is_unavailable(exc):
        return StorageUnavailable(f"storage unavailable during {what}: {type(exc).__name__}")
    return StorageError(_refused(exc), log_message=f"{what} failed: {exc}")


def _refused(exc: Exception) -> str:
    """What a client may be told of a refusal: its AWS code, never a bucket, table or key name."""
    code = error_code(exc)
    return "the object store or the status table refused the request" + (f" ({code})" if code else "")
