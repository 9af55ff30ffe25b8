"""Adoption: identical bytes already stored but listed in no manifest (left by a request that failed, or is
still in flight) are listed in the manifest of the request that finds them, so they are processed as soon
as any client is told they are stored, and never before (docs/decisions.md)."""

from __future__ import annotations

import asyncio
import logging

from radstream import keys
from radstream import manifest as manifest_store
from radstream.aws.s3 import ObjectStore, StoredObject
from radstream.dicom import InstanceHeader
from radstream.errors import NotFound

log = logging.getLogger("radstream.ingest")


class RecordedKeys:
    """What this request learnt of the study's manifests, each asked once per request: whether the request
    that created an object wrote its manifest (usually one creator for a whole re-sent study), and, only
    when one did not, the instance keys that the study's manifests list."""

    def __init__(self, images: ObjectStore, tenant: str) -> None:
        self._images = images
        self._tenant = tenant
        self._by_study: dict[str, set[str]] = {}
        self._creators: dict[tuple[str, str], asyncio.Future[frozenset[str]]] = {}  # shared by parts asking at once
        self._lock = asyncio.Lock()

    async def listed_by_creator(self, study: str, creator: str, key: str) -> bool:
        """Whether the creator's manifest lists ``key`` (it may exist without it: the creator's write of
        that part reached S3 but failed for the creator, which answered 0xA700 and listed the rest)."""
        lookup = self._creators.get((study, creator))
        if lookup is None:
            lookup = asyncio.ensure_future(self._manifest_keys(keys.manifest_key(self._tenant, study, creator)))
            self._creators[(study, creator)] = lookup
        return key in await asyncio.shield(lookup)  # one part cancelled does not cancel the others' answer

    async def _manifest_keys(self, manifest_key: str) -> frozenset[str]:
        try:
            listed = await manifest_store.load(self._images, manifest_key)
        except NotFound:
            return frozenset()
        return frozenset(instance.key for instance in listed.instances)

    async def contains(self, study: str, key: str) -> bool:
        async with self._lock:
            if study not in self._by_study:
                self._by_study[study] = set(await manifest_store.recorded_keys(self._images, self._tenant, study))
        return key in self._by_study[study]


async def unrecorded(key: str, header: InstanceHeader, existing: StoredObject | None, recorded: RecordedKeys) -> bool:
    """Whether identical bytes already stored are in no manifest: left by a request that failed (or is
    still in flight) and not listed by a re-send since. Then this request lists them in its manifest.
    The creator's manifest answers the common case, read once per creator and request; only when it
    does not list the key are the study's manifests read (once per request). Objects without a creator
    (written before creators were recorded) count as recorded."""
    creator = existing.request_id if existing is not None else None
    if creator is None or not keys.is_request_id(creator):
        return False
    if await recorded.listed_by_creator(header.study_instance_uid, creator, key):
        return False
    try:
        return not await recorded.contains(header.study_instance_uid, key)
    except Exception as exc:  # cannot tell: list it again (processed twice at worst, never lost)
        log.warning("manifests of %s not read: %s", header.study_instance_uid, exc)
        return True
