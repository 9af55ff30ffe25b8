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


class ExportState(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class ExportStatus(BaseModel):
    destination: str
    status: ExportState
    attempts: int = Field(0, description="sends tried for the run's results so far")
    last_error: str | None = Field(None, description="the remote's answer to the last failed attempt")
    sent_at: datetime | None = None
    run_id: str | None = Field(None, description="the run whose SR and SEG are (to be) sent")
    first_attempt_at: datetime | None = None


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
    run_id: str | None = Field(None, description="the run in flight, else the latest that ended")
    runs: int = Field(0, description="runs of the pipeline started for this study so far")
    exports: list[ExportStatus] = Field(default_factory=list, description="one per destination of the results")


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


@dataclass(frozen=True)
class Run:
    """One run of the pipeline over a study: what the study's row says it covers.

    A study has at most one run in flight. Requests that arrive meanwhile are folded into one follow-up run,
    started when this one ends (docs/decisions.md, "Runs")."""

    tenant: str
    study: str
    run_id: str
    seq: int  # 1 for the study's first run
    full: bool  # infer every instance again (a reprocess), not only those without outputs

    def document(self) -> dict[str, Any]:
        """The execution's input (``action`` "run": the state machine's first Choice tells it from a re-export)."""
        return {
            "action": "run",
            "tenant": self.tenant,
            "study": self.study,
            "run_id": self.run_id,
            "seq": self.seq,
            "full": self.full,
        }

    @classmethod
    def of(cls, event: dict[str, Any]) -> Run:
        return cls(
            tenant=str(event["tenant"]),
            study=str(event["study"]),
            run_id=str(event["run_id"]),
            seq=int(event["seq"]),
            full=bool(event.get("full", False)),
        )


@dataclass(frozen=True)
class RunRow:
    """The run fields of a study's row, as read: the run in flight (if any), the one it followed, the latest
    that ended, and how many runs began."""

    run_id: str | None
    previous_run: str | None
    last_run: str | None
    runs: int
    full: bool
    started_at: datetime | None
    status: str | None
    open_since: datetime | None


NO_MODEL_DETAIL = "no model for this input"  # a study completed without results: no model applies
