"""The object store: S3 through aioboto3, with write-once semantics for DICOM instances.

``put_once`` uses a conditional write (``If-None-Match: *``), so two writers can never replace an object
and the answer always says what is in the bucket now: created, identical (same SHA-256), or conflict.
An object it creates names the request that created it (metadata ``request-id``).
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from botocore.exceptions import ClientError

from radstream.aws.errors import error_code, translate
from radstream.errors import NotFound, StorageUnavailable

SHA256_METADATA_KEY = "sha256"
TRANSFER_SYNTAX_METADATA_KEY = "transfer-syntax"  # of a DICOM instance, so WADO-RS can label it unread
REQUEST_METADATA_KEY = "request-id"


class PutOutcome(enum.Enum):
    CREATED = "created"
    IDENTICAL = "identical"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str | None
    content_type: str | None
    request_id: str | None = None  # the STOW request that created it (absent on objects written before)
    transfer_syntax: str | None = None  # of a DICOM instance (absent on objects written before)
    last_modified: datetime | None = None


@dataclass(frozen=True)
class PutResult:
    outcome: PutOutcome
    existing: StoredObject | None = None  # what was there already (IDENTICAL, CONFLICT)


class ObjectStore:
    """Thin typed wrapper over an aioboto3 S3 client for one bucket."""

    def __init__(self, client: Any, bucket: str, *, kms_key_id: str | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        self._kms_key_id = kms_key_id

    def _encryption(self) -> dict[str, str]:
        if self._kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self._kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    async def put_once(
        self,
        key: str,
        body: IO[bytes] | bytes,
        *,
        sha256: str,
        size: int,
        content_type: str,
        request_id: str | None = None,
        transfer_syntax: str | None = None,
    ) -> PutResult:
        """Write ``body`` under ``key`` unless an object is there already; never overwrite.

        S3 answers 412 when the object exists (compared by SHA-256: identical or conflict) and 409 when
        another conditional write of the key is in progress: that one is StorageUnavailable (retry later),
        as is an object that disappears between the refused write and the look at it.
        """
        metadata = {SHA256_METADATA_KEY: sha256}
        if request_id is not None:
            metadata[REQUEST_METADATA_KEY] = request_id
        if transfer_syntax is not None:
            metadata[TRANSFER_SYNTAX_METADATA_KEY] = transfer_syntax
        try:
            await self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ContentType=content_type,
                Metadata=metadata,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                IfNoneMatch="*",
                **self._encryption(),
            )
            return PutResult(PutOutcome.CREATED)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 409:
                raise StorageUnavailable(f"another write of {key} is in progress; retry later") from exc
            if status != 412:
                raise translate(exc, "PutObject") from exc
        except Exception as exc:
            raise translate(exc, "PutObject") from exc
        try:
            existing = await self.head(key)
        except NotFound as exc:
            raise StorageUnavailable(f"{key} changed while it was written; retry later") from exc
        return PutResult(PutOutcome.IDENTICAL if existing.sha256 == sha256 else PutOutcome.CONFLICT, existing)

    async def put_json(self, key: str, document: Any) -> None:
        body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        await self.put_bytes(key, body, content_type="application/json")

    async def put_bytes(self, key: str, body: bytes, *, content_type: str) -> None:
        try:
            await self._s3.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **self._encryption()
            )
        except Exception as exc:
            raise translate(exc, "PutObject") from exc

    async def head(self, key: str) -> StoredObject:
        try:
            meta = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise NotFound(f"object {key} not found") from exc
            raise translate(exc, "HeadObject") from exc
        except Exception as exc:
            raise translate(exc, "HeadObject") from exc
        metadata = meta.get("Metadata", {})
        return StoredObject(
            size=int(meta["ContentLength"]),
            sha256=metadata.get(SHA256_METADATA_KEY),
            content_type=meta.get("ContentType"),
            request_id=metadata.get(REQUEST_METADATA_KEY),
            transfer_syntax=metadata.get(TRANSFER_SYNTAX_METADATA_KEY),
            last_modified=meta.get("LastModified"),
        )

    async def get_bytes(self, key: str) -> bytes:
        _, chunks = await self.open_stream(key)
        return b"".join([chunk async for chunk in chunks])

    async def _get_object(self, key: str, **extra: Any) -> dict[str, Any]:
        """GetObject of ``key``; NotFound when missing, else translated (see :func:`translate`)."""
        try:
            response: dict[str, Any] = await self._s3.get_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise NotFound(f"object {key} not found") from exc
            raise translate(exc, "GetObject") from exc
        return response

    async def open_stream(self, key: str, chunk_bytes: int = 256 * 1024) -> tuple[int, AsyncIterator[bytes]]:
        """(size, iterator over the body) of ``key``; NotFound when missing. The body is not buffered."""
        size, _, chunks = await self.open_object(key, chunk_bytes)
        return size, chunks

    async def open_object(
        self, key: str, chunk_bytes: int = 256 * 1024
    ) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        """(size, user metadata, iterator over the body) of ``key``; NotFound when missing."""
        response = await self._get_object(key)
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body.iter_chunks(chunk_bytes):
                    yield chunk
            finally:
                body.close()

        return int(response["ContentLength"]), dict(response.get("Metadata") or {}), chunks()

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        try:
            while True:
                page = await self._s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **token)
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
                if not page.get("IsTruncated"):
                    return keys
                token = {"ContinuationToken": page["NextContinuationToken"]}
        except Exception as exc:
            raise translate(exc, "ListObjectsV2") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise translate(exc, "DeleteObject") from exc

    async def reachable(self) -> bool:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except Exception:
            return False
        return True
