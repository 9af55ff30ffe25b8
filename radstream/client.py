"""A STOW-RS client: walks files, groups instances by study, uploads them in batches.

Used by ``radstream send`` and by the benchmarks; bodies are streamed from disk, never built in memory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from radstream.dicom import DicomPartError, read_header

FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
ERROR_COMMENT = "00000902"
SOP_INSTANCE = "00081155"


@dataclass(frozen=True)
class LocalInstance:
    path: Path
    study_instance_uid: str
    size: int


@dataclass
class SendReport:
    stored: int = 0
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that are not DICOM
    requests: int = 0
    bytes_sent: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def iter_files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            for root, _dirs, files in os.walk(path):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def scan(paths: Iterable[Path], report: SendReport) -> dict[str, list[LocalInstance]]:
    """Group the DICOM files under ``paths`` by study; non-DICOM files go to ``report.skipped``."""
    studies: dict[str, list[LocalInstance]] = {}
    for path in iter_files(paths):
        try:
            with path.open("rb") as fh:
                header = read_header(fh)
        except DicomPartError as exc:
            report.skipped.append(f"{path}: {exc.detail}")
            continue
        except OSError as exc:
            report.skipped.append(f"{path}: {exc.strerror}")
            continue
        studies.setdefault(header.study_instance_uid, []).append(
            LocalInstance(path, header.study_instance_uid, path.stat().st_size)
        )
    return studies


def batches(studies: dict[str, list[LocalInstance]], size: int) -> list[list[LocalInstance]]:
    out: list[list[LocalInstance]] = []
    for instances in studies.values():
        for i in range(0, len(instances), size):
            out.append(instances[i : i + size])
    return out


async def multipart_body(instances: list[LocalInstance], boundary: str) -> AsyncIterator[bytes]:
    for inst in instances:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        data = await asyncio.to_thread(inst.path.read_bytes)
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = body.get(tag, {}).get("Value", [])
    return value if isinstance(value, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class StowClient:
    def __init__(self, url: str, api_key: str, *, timeout_s: float = 300.0) -> None:
        self._url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def store(self, instances: list[LocalInstance], report: SendReport) -> None:
        boundary = uuid.uuid4().hex
        study = instances[0].study_instance_uid
        response = await self._http.post(
            f"{self._url}/dicomweb/studies/{study}",
            content=multipart_body(instances, boundary),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        report.requests += 1
        report.bytes_sent += sum(i.size for i in instances)
        if response.headers.get("content-type", "").startswith("application/dicom+json"):
            body = response.json()
            for item in _items(body, "00081199"):
                report.stored += 1
                if WARNING_REASON in item:
                    report.warnings.append(
                        f"{_first(item, SOP_INSTANCE)}: warning 0x{_first(item, WARNING_REASON):04X}"
                    )
            for item in _items(body, "00081198"):
                comment = _first(item, ERROR_COMMENT) or ""
                reason = _first(item, FAILURE_REASON) or 0
                report.failures.append(f"{_first(item, SOP_INSTANCE) or '?'}: 0x{reason:04X} {comment}".rstrip())
            return
        detail = response.text[:300]
        report.failures.append(f"study {study}: HTTP {response.status_code} {detail} ({len(instances)} instances)")


async def send(
    paths: list[Path],
    *,
    url: str,
    api_key: str,
    batch: int = 10,
    concurrency: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> SendReport:
    """Upload every DICOM file under ``paths``; ``on_progress(instances_done, bytes_done)`` after each batch."""
    report = SendReport()
    studies = await asyncio.to_thread(scan, paths, report)
    if on_total is not None:
        on_total(sum(len(v) for v in studies.values()))
    client = StowClient(url, api_key)
    slots = asyncio.Semaphore(concurrency)

    async def one(group: list[LocalInstance]) -> None:
        async with slots:
            try:
                await client.store(group, report)
            except httpx.HTTPError as exc:
                report.failures.append(f"study {group[0].study_instance_uid}: {type(exc).__name__}: {exc}")
            if on_progress is not None:
                on_progress(len(group), sum(i.size for i in group))

    try:
        await asyncio.gather(*(one(group) for group in batches(studies, batch)))
    finally:
        await client.aclose()
    return report
