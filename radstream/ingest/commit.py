"""Commit: record the study (status row) and write the manifest of what one request or association newly
stored or adopted. The manifest starts the pipeline, so the row comes first; a commit that fails puts the
row back as it was, unless something changed it since, and claims nothing."""

from __future__ import annotations

import asyncio
import logging

from radstream import keys
from radstream import manifest as manifest_store
from radstream.aws.dynamodb import StatusStore
from radstream.aws.s3 import ObjectStore
from radstream.errors import StorageError, StorageUnavailable
from radstream.ingest.outcome import IngestOutcome, StoredInstance
from radstream.manifest import Manifest, ManifestInstance
from radstream.status import ReceivedWrite, StudyState, utcnow

log = logging.getLogger("radstream.ingest")


class Committer:
    def __init__(self, images: ObjectStore, status: StatusStore, *, retry_after_s: int) -> None:
        self._images = images
        self._status = status
        self._retry_after_s = retry_after_s

    async def commit(self, tenant: str, request_id: str, outcome: IngestOutcome) -> None:
        """Record the study and write the manifest for what this request newly stored or adopted."""
        new: list[StoredInstance] = []
        listed: set[str] = set()
        for inst in outcome.stored:  # an instance sent twice in one request is listed once
            if inst.in_manifest and inst.key not in listed:
                listed.add(inst.key)
                new.append(inst)
        by_study: dict[str, list[StoredInstance]] = {}
        for inst in new:
            by_study.setdefault(inst.header.study_instance_uid, []).append(inst)
        rows: list[tuple[str, ReceivedWrite]] = []  # status rows written whose manifest is not
        try:
            for study, instances in by_study.items():
                key = keys.manifest_key(tenant, study, request_id)
                # The status row must exist before the manifest starts the pipeline.
                rows.append((study, await self._status.record_received(tenant, study, token=request_id)))
                await self._images.put_json(key, manifest_document(tenant, study, request_id, instances))
                rows.pop()
                outcome.manifest_key = key
        except (StorageUnavailable, StorageError) as exc:
            log.error("manifest for %d instances not written: %s", len(new), exc)
            await self._undo_rows(tenant, rows)
            raise StorageUnavailable(
                "storage failed while recording the request; re-send it (instances stored already are recognised)",
                headers={"Retry-After": str(self._retry_after_s)},
            ) from exc
        except BaseException:  # cancelled (shutdown) or a bug: the same clean-up, which cancelling cannot stop
            await asyncio.shield(self._undo_rows(tenant, rows))
            raise
        for study in {inst.header.study_instance_uid for inst in outcome.stored} - by_study.keys():
            await self._retry_if_failed(tenant, study)

    async def _retry_if_failed(self, tenant: str, study: str) -> None:
        """A re-send of a failed study that stored nothing new asks for a run of it: the sender's way to say
        "try again" (the run infers what has no output yet)."""
        try:
            status = await self._status.get(tenant, study, instances=0, series=0)
            if status is not None and status.status is StudyState.FAILED:
                await manifest_store.write_run_request(self._images, tenant, study, full=False)
                log.info("study %s failed before and was sent again: a new run is asked for", study)
        except (StorageUnavailable, StorageError) as exc:
            raise StorageUnavailable(
                "storage failed while asking for a new run of the failed study; re-send it",
                headers={"Retry-After": str(self._retry_after_s)},
            ) from exc

    async def _recorded_writer(self, tenant: str, study: str, row: ReceivedWrite) -> bool:
        """Whether the request that wrote the row before ``row`` wrote its manifest."""
        writer = str((row.previous or {}).get("received_by", {}).get("S", ""))
        if not keys.is_request_id(writer):
            return False
        try:
            await self._images.head(keys.manifest_key(tenant, study, writer))
        except Exception:  # missing, or cannot tell: the checks that follow decide
            return False
        return True

    async def _undo_rows(self, tenant: str, rows: list[tuple[str, ReceivedWrite]]) -> None:
        for study, row in rows:  # the study is as it was: not `received` for a request that recorded nothing
            await self._undo_quietly(tenant, study, row)

    async def _undo_quietly(self, tenant: str, study: str, row: ReceivedWrite) -> None:
        if row.previous_state == StudyState.RECEIVED.value and not await self._recorded_writer(tenant, study, row):
            # The row before was another request's `received`, and that request's manifest is not there
            # (yet): if it failed too, restoring its row would leave a study that no manifest started
            # `received`. With no manifest of the study, no row is the truth; with some, the other
            # request's row stands. (If it was only slow, its execution creates the row again.)
            try:
                if not await self._images.list_keys(keys.study_manifest_prefix(tenant, study)):
                    row = row.without_previous()
            except Exception as exc:  # cannot tell: restore the row before, as written
                log.warning("manifests of %s not listed: %s", study, exc)
        try:
            if not await self._status.undo_received(tenant, study, row):
                log.warning("status of %s changed since this request wrote it; left as it is", study)
        except Exception as exc:  # best effort: the manifest is what starts processing
            log.warning("status of %s not restored: %s", study, exc)


def manifest_document(tenant: str, study: str, request_id: str, instances: list[StoredInstance]) -> dict[str, object]:
    manifest = Manifest(
        request_id=request_id,
        tenant=tenant,
        study_instance_uid=study,
        received_at=utcnow(),
        instances=[
            ManifestInstance(
                key=i.key,
                sop_class_uid=i.header.sop_class_uid,
                sop_instance_uid=i.header.sop_instance_uid,
                series_instance_uid=i.header.series_instance_uid,
                transfer_syntax_uid=i.header.transfer_syntax_uid,
                modality=i.header.modality,
                size=i.size,
                sha256=i.sha256,
            )
            for i in instances
        ],
    )
    return manifest.model_dump(mode="json")
