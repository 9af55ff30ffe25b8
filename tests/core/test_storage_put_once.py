"""ObjectStore.put_once: what each answer of a conditional PutObject becomes (fake S3 client)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from radstream.aws.s3 import ObjectStore, PutOutcome
from radstream.errors import StorageUnavailable

DATA = b"DICM-bytes"
SHA = hashlib.sha256(DATA).hexdigest()


def _error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


class FakeS3:
    def __init__(self, put_error: ClientError | None, head: dict[str, Any] | None) -> None:
        self.put_error = put_error
        self.head = head
        self.puts: list[dict[str, Any]] = []

    async def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.puts.append(kwargs)
        if self.put_error is not None:
            raise self.put_error
        return {}

    async def head_object(self, **kwargs: Any) -> dict[str, Any]:
        if self.head is None:
            raise _error(404, "404")
        return self.head


async def _put(s3: FakeS3) -> Any:
    return await ObjectStore(s3, "images").put_once(
        "k.dcm", DATA, sha256=SHA, size=len(DATA), content_type="application/dicom", request_id="20261126T000000-abc"
    )


async def test_created_objects_name_the_request_that_created_them() -> None:
    s3 = FakeS3(None, None)
    result = await _put(s3)
    assert result.outcome is PutOutcome.CREATED and result.existing is None
    assert s3.puts[0]["Metadata"] == {"sha256": SHA, "request-id": "20261126T000000-abc"}
    assert s3.puts[0]["IfNoneMatch"] == "*"


@pytest.mark.parametrize(("stored_sha", "outcome"), [(SHA, PutOutcome.IDENTICAL), ("0" * 64, PutOutcome.CONFLICT)])
async def test_an_existing_object_is_compared_and_its_creator_returned(stored_sha: str, outcome: PutOutcome) -> None:
    head = {"ContentLength": len(DATA), "Metadata": {"sha256": stored_sha, "request-id": "20261125T000000-old"}}
    result = await _put(FakeS3(_error(412, "PreconditionFailed"), head))
    assert result.outcome is outcome
    assert result.existing is not None and result.existing.request_id == "20261125T000000-old"


async def test_a_concurrent_conditional_write_is_retry_later_not_a_missing_object() -> None:
    # 409 ConditionalRequestConflict: another conditional write of the key is in progress.
    with pytest.raises(StorageUnavailable, match="in progress"):
        await _put(FakeS3(_error(409, "ConditionalRequestConflict"), None))


async def test_an_object_gone_between_the_refused_write_and_the_look_is_retry_later() -> None:
    with pytest.raises(StorageUnavailable, match="changed while it was written"):
        await _put(FakeS3(_error(412, "PreconditionFailed"), None))
