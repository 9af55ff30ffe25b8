"""A study's status: its states and what the status document shows (stored by radstream/aws/dynamodb.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field


class StudyState(enum.StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class StudyStatus(BaseModel):
    study_instance_uid: str
    status: StudyState
    instances: int = Field(description="SOP instances stored for this study")
    series: int = Field(description="distinct series among them")
    created_at: datetime
    updated_at: datetime
    stage_times_ms: dict[str, float] = Field(default_factory=dict)
    result_location: str | None = None
    failure_reason: str | None = None
    model: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReceivedWrite:
    """What :meth:`~radstream.aws.dynamodb.StatusStore.record_received` changed: the row as it was before
    (None: there was none), and the ``updated_at`` and writer token it wrote, so the write can be undone
    while nothing else changed the row."""

    previous: dict[str, Any] | None
    updated_at: str
    token: str

    @property
    def previous_state(self) -> str | None:
        return None if self.previous is None else str(self.previous.get("status", {}).get("S"))

    def without_previous(self) -> ReceivedWrite:
        """The same write, undone by removing the row instead of restoring the one before."""
        return ReceivedWrite(previous=None, updated_at=self.updated_at, token=self.token)


NO_MODEL_DETAIL = "no model for this input"  # a study completed without results: no model applies
