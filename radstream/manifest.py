"""The manifest: one per accepted STOW request, listing what it newly stored. It starts the pipeline."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from radstream import keys
from radstream.errors import NotFound
from radstream.status import utcnow

if TYPE_CHECKING:
    from radstream.aws.s3 import ObjectStore

SCHEMA_VERSION = 1


class ManifestInstance(BaseModel):
    key: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    size: int
    sha256: str


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    request_id: str
    tenant: str
    study_instance_uid: str
    received_at: datetime
    instances: list[ManifestInstance]


async def load(images: ObjectStore, key: str) -> Manifest:
    """The manifest stored under ``key``; NotFound when missing, pydantic's ValidationError when malformed."""
    return Manifest.model_validate_json(await images.get_bytes(key))


MANIFEST_READS_IN_FLIGHT = 16


async def study_manifests(images: ObjectStore, tenant: str, study: str) -> list[Manifest]:
    """Every manifest of the study, in the order the requests came (their ids begin with the time). Read
    concurrently, at most ``MANIFEST_READS_IN_FLIGHT`` at once. One withdrawn meanwhile is left out."""
    manifest_keys = sorted(await images.list_keys(keys.study_manifest_prefix(tenant, study)))
    slots = asyncio.Semaphore(MANIFEST_READS_IN_FLIGHT)

    async def read(key: str) -> Manifest | None:
        async with slots:
            try:
                return await load(images, key)
            except NotFound:
                return None

    return [m for m in await asyncio.gather(*(read(key) for key in manifest_keys)) if m is not None]


def instances_of(manifests: list[Manifest]) -> list[ManifestInstance]:
    """Each instance key once, in the order the requests came."""
    listed: dict[str, ManifestInstance] = {}
    for manifest in manifests:
        for instance in manifest.instances:
            listed.setdefault(instance.key, instance)
    return list(listed.values())


async def recorded(images: ObjectStore, tenant: str, study: str) -> list[ManifestInstance]:
    """The instances that the study's manifests list (each key once, in the order the requests came): what
    STOW-RS requests were told is stored. Objects that a failed request left are not among them."""
    return instances_of(await study_manifests(images, tenant, study))


async def recorded_keys(images: ObjectStore, tenant: str, study: str) -> list[str]:
    """The keys of :func:`recorded`."""
    return [instance.key for instance in await recorded(images, tenant, study)]


async def write_run_request(images: ObjectStore, tenant: str, study: str, *, full: bool) -> str:
    """Ask for a run of the study without new instances: a manifest that lists none (a reprocess when
    ``full``: its run infers every instance again; else the retry of a failed study). Its id."""
    request_id = keys.new_full_request_id() if full else keys.new_request_id()
    document = Manifest(
        request_id=request_id, tenant=tenant, study_instance_uid=study, received_at=utcnow(), instances=[]
    )
    await images.put_json(keys.manifest_key(tenant, study, request_id), document.model_dump(mode="json"))
    return request_id
