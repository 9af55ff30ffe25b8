"""What ingesting one request or association came to: instances stored (new, re-sent or adopted) and
instances refused, each with its PS3.18 failure reason. Every front door builds one and answers from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from radstream.dicom import InstanceHeader
from radstream.errors import CONFLICT_REASONS, RESOURCE_REASONS, FailureReason


@dataclass
class StoredInstance:
    header: InstanceHeader
    key: str
    size: int
    sha256: str
    created: bool  # False: identical bytes were stored already
    adopted: bool = False  # identical bytes stored by a request that wrote no manifest for them

    @property
    def in_manifest(self) -> bool:
        """Listed in this request's manifest: new to the pipeline."""
        return self.created or self.adopted


@dataclass
class FailedInstance:
    reason: FailureReason
    detail: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass
class IngestOutcome:
    study_instance_uid: str | None
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    manifest_key: str | None = None

    @property
    def http_status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 some failed or warnings, 409/400/503 none stored."""
        if self.stored:
            warned = any(s.header.warnings for s in self.stored)
            return 202 if self.failed or warned else 200
        reasons = {f.reason for f in self.failed}
        if reasons and reasons <= RESOURCE_REASONS:
            return 503
        if reasons & CONFLICT_REASONS:
            return 409
        return 400
