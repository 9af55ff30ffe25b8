"""The manifest: one per accepted STOW request, listing what it newly stored. It starts the pipeline."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from radstream import keys

if TYPE_CHECKING:
    from radstream.storage import ObjectStore

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


async def recorded_keys(images: ObjectStore, tenant: str, study: str) -> list[str]:
    """The instance keys that the study's manifests list (each once, in the order the requests came):
    what STOW-RS requests were told is stored."""
    listed: dict[str, None] = {}
    for manifest_key in sorted(await images.list_keys(keys.study_manifest_prefix(tenant, study))):
        listed.update((instance.key, None) for instance in (await load(images, manifest_key)).instances)
    return list(listed)
