"""Status table errors: what the caller may retry (StorageUnavailable) and what it may not (StorageError)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from radstream.aws.dynamodb import StatusStore
from radstream.errors import StorageError, StorageUnavailable
from radstream.status import StudyState


class FailingTable:
    def __init__(self, code: str, http_status: int) -> None:
        self.error = ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": http_status}},  # type: ignore[typeddict-item]
            "UpdateItem",
        )

    async def update_item(self, **kwargs: Any) -> dict[str, Any]:
        raise self.error


@pytest.mark.parametrize(
    "code", ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"]
)
async def test_throttling_is_unavailable_storage(code: str) -> None:
    store = StatusStore(FailingTable(code, 400), "studies")
    with pytest.raises(StorageUnavailable, match=f"throttled \\({code}\\)"):
        await store.set_state("alpha", "1.2.3", StudyState.PROCESSING)
    with pytest.raises(StorageUnavailable):
        await store.record_received("alpha", "1.2.3")


async def test_server_errors_are_unavailable_and_client_errors_are_not() -> None:
    with pytest.raises(StorageUnavailable):
        await StatusStore(FailingTable("InternalServerError", 500), "studies").set_state(
            "alpha", "1.2.3", StudyState.FAILED
        )
    with pytest.raises(StorageError):
        await StatusStore(FailingTable("ValidationException", 400), "studies").set_state(
            "alpha", "1.2.3", StudyState.FAILED
        )
