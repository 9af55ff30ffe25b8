"""The manifest: one per accepted STOW request, listing what it newly stored. It starts the pipeline."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

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
