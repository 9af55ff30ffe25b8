"""What one association stored, grouped into manifests.

An association does not say when a study is complete. Each association is a run of "requests" in the
ingestion core's sense: what it stored since the last manifest is written as a manifest (one per study)
at release or abort, and while it stays open after ``flush_instances`` instances or ``flush_quiet_s``
seconds without a C-STORE, so a long-lived association still starts processing. Studies that arrive
over several associations get one manifest per association (and flush), as STOW-RS requests do; the
pipeline builds each study's results from every manifest of it.

Every instance is acknowledged only after S3 confirmed its write, and, for the first instance of each
study under a request id, after the open-association record names the study (dimse/recovery.py), so a
listener killed before the manifest leaves what another listener needs to write it. A manifest that
cannot be written (storage unavailable) is kept and written at the next flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from io import BytesIO

from dimse.recovery import record_closed, record_open
from radstream import keys
from radstream.aws.s3 import ObjectStore
from radstream.errors import FailureReason, StorageError, StorageUnavailable
from radstream.ingest.adoption import RecordedKeys
from radstream.ingest.commit import Committer
from radstream.ingest.instance import store_instance
from radstream.ingest.outcome import FailedInstance, IngestOutcome, StoredInstance

log = logging.getLogger("radstream.dimse")


class AssociationBatch:
    def __init__(self, images: ObjectStore, committer: Committer, tenant: str, *, flush_instances: int) -> None:
        self._images = images
        self._committer = committer
        self.tenant = tenant
        self._flush_instances = flush_instances
        self._lock = asyncio.Lock()
        self._pending: list[StoredInstance] = []
        self._new_request()
        self.last_store = time.monotonic()
        self.stored = 0
        self.bytes = 0

    def _new_request(self) -> None:
        self.request_id = keys.new_request_id()
        self._recorded = RecordedKeys(self._images, self.tenant)
        self._open_studies: list[str] = []  # named by this request's open-association record

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def store(self, body: bytes, sha256: str) -> StoredInstance | FailedInstance:
        """Store one Part 10 instance; the answer for its C-STORE response."""
        async with self._lock:
            self.last_store = time.monotonic()
            result = await store_instance(
                self._images,
                tenant=self.tenant,
                request_id=self.request_id,
                expected_study_uid=None,
                file=BytesIO(body),
                size=len(body),
                sha256=sha256,
                in_memory=True,
                recorded=self._recorded,
            )
            if isinstance(result, StoredInstance):
                if result.in_manifest and result.header.study_instance_uid not in self._open_studies:
                    studies = [*self._open_studies, result.header.study_instance_uid]
                    try:
                        await record_open(self._images, self.tenant, self.request_id, studies)
                    except (StorageUnavailable, StorageError) as exc:  # stored, but not acknowledged
                        return FailedInstance(FailureReason.OUT_OF_RESOURCES, exc.detail[:64])
                    self._open_studies = studies
                self.stored += 1
                self.bytes += result.size
                if result.in_manifest:
                    self._pending.append(result)
                if len(self._pending) >= self._flush_instances:
                    await self._flush()
            return result

    async def flush(self) -> bool:
        """Write the manifests of what is pending; False when storage did not take them (kept for later)."""
        async with self._lock:
            return await self._flush()

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        outcome = IngestOutcome(study_instance_uid=None, stored=list(self._pending))
        try:
            await self._committer.commit(self.tenant, self.request_id, outcome)
        except (StorageUnavailable, StorageError) as exc:
            log.warning("manifest of %d instances not written yet: %s", len(self._pending), type(exc).__name__)
            return False
        self._pending.clear()
        try:
            await record_closed(self._images, self.tenant, self.request_id)
        except (StorageUnavailable, StorageError) as exc:  # a sweep removes it (the manifest exists)
            log.warning("open-association record %s not removed: %s", self.request_id, type(exc).__name__)
        self._new_request()
        return True
