"""The manifest: one per accepted STOW request, listing what it newly stored. It starts the pipeline."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from radstream import keys

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


async def recorded(images: ObjectStore, tenant: str, study: str) -> list[ManifestInstance]:
    """The instances that the study's manifests list (each key once, in the order the requests came): what
    STOW-RS requests were told is stored. Manifests are read concurrently (at most
    ``MANIFEST_READS_IN_FLIGHT`` at once); objects that a failed request left are not among them."""
    manifest_keys = sorted(await images.list_keys(keys.study_manifest_prefix(tenant, study)))
    slots = asyncio.Semaphore(MANIFEST_READS_IN_FLIGHT)

    async def read(key: str) -> Manifest:
        async with slots:
            return await load(images, key)

    listed: dict[str, ManifestInstance] = {}
    for manifest in await asyncio.gather(*(read(key) for key in manifest_keys)):
        for instance in manifest.instances:
            listed.setdefault(instance.key, instance)
    return list(listed.values())


async def recorded_keys(images: ObjectStore, tenant: str, study: str) -> list[str]:
    """The keys of :func:`recorded`."""
    return [instance.key for instance in await recorded(images, tenant, study)]
