"""Store Instances Response (PS3.18 10.5.3, Table 10.5.3-1) in the DICOM JSON model (PS3.18 F.2)."""

from __future__ import annotations

from typing import Any

from radstream.ingest.outcome import FailedInstance, IngestOutcome, StoredInstance

DICOM_JSON = "application/dicom+json"


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _ur(value: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]}


def _us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def instance_url(base_url: str, study: str, series: str, sop: str) -> str:
    return f"{base_url}/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def _referenced(base_url: str, inst: StoredInstance) -> dict[str, Any]:
    h = inst.header
    item: dict[str, Any] = {
        "00081150": _ui(h.sop_class_uid),
        "00081155": _ui(h.sop_instance_uid),
        "00081190": _ur(instance_url(base_url, h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid)),
    }
    if h.warnings:
        item["00081196"] = _us(int(h.warnings[0][0]))
    return item


def _failed(inst: FailedInstance) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if inst.sop_class_uid:
        item["00081150"] = _ui(inst.sop_class_uid)
    if inst.sop_instance_uid:
        item["00081155"] = _ui(inst.sop_instance_uid)
    item["00081197"] = _us(int(inst.reason))
    # Error Comment (0000,0902): the human-readable reason, as DIMSE carries it.
    item["00000902"] = {"vr": "LO", "Value": [inst.detail[:64]]}
    return item


def store_instances_response(base_url: str, outcome: IngestOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {}
    studies = {s.header.study_instance_uid for s in outcome.stored}
    study = outcome.study_instance_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if study is not None:
        body["00081190"] = _ur(f"{base_url}/dicomweb/studies/{study}")
    if outcome.failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failed(f) for f in outcome.failed]}
    if outcome.stored:
        body["00081199"] = {"vr": "SQ", "Value": [_referenced(base_url, s) for s in outcome.stored]}
    return body
