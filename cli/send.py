"""A STOW-RS client: walks files, groups instances by study, uploads them in batches.

Used by ``radstream send``. Bodies are streamed from disk in chunks, so memory does not grow with the size
of a file or of a batch. Every file found ends in one place of the report: stored, failed (the server
refused it, or it could not be sent), unreadable, or skipped (not DICOM); the DICOM instances found are
the stored plus the failed ones, and anything but stored and skipped makes the command exit non-zero.

A batch the gateway answers 503 (storage unavailable, or every upload slot busy) or 429 is sent again
after its Retry-After, and so are the instances of a partly stored batch (202) that the gateway refused
with 0xA700 (out of resources: storage away for a moment), alone; a batch whose connection failed, after
a short back-off. Re-sending is safe: the
gateway recognises instances it stored already (identical bytes, no second copy).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom

from radstream.dicom import read_header, starts_with_file_meta
from radstream.errors import DicomPartError, FailureReason

FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
ERROR_COMMENT = "00000902"
SOP_INSTANCE = "00081155"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"

READ_CHUNK_BYTES = 1 << 20
RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 60.0
TRANSPORT_BACKOFF_S = 1.0


@dataclass(frozen=True)
class LocalInstance:
    path: Path
    study_instance_uid: str
    sop_instance_uid: str
    size: int


@dataclass
class SendReport:
    found: int = 0  # DICOM files found: stored + failed (an instance sent twice in one batch is answered once)
    stored: int = 0
    failed: int = 0  # instances not stored: refused by the server, or the request carrying them failed
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what failed and why, one line per instance or request
    unreadable: list[str] = field(default_factory=list)  # files and folders that could not be read
    skipped: list[str] = field(default_factory=list)  # files that are not DICOM
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0

    def fail(self, line: str, instances: int = 1) -> None:
        self.failures.append(line)
        self.failed += instances

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unreadable


def iter_files(paths: Iterable[Path], report: SendReport) -> Iterator[Path]:
    """Every file under ``paths``, each once: symbolic links followed (a loop is not entered twice), folders
    that cannot be listed reported as unreadable."""
    seen_files: set[tuple[int, int]] = set()

    def once(path: Path) -> bool:
        try:
            st = path.stat()
        except OSError:
            return True  # open() reports why
        key = (st.st_dev, st.st_ino)
        if key in seen_files:
            return False
        seen_files.add(key)
        return True

    def unlistable(exc: OSError) -> None:
        report.unreadable.append(f"{exc.filename}: folder not read: {exc.strerror}")

    for path in paths:
        if not path.is_dir():
            if once(path):
                yield path
            continue
        seen_dirs: set[tuple[int, int]] = set()
        for root, dirs, files in os.walk(path, onerror=unlistable, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen_dirs:  # reached again through a link
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs.sort()
            for name in sorted(files):
                file = Path(root) / name
                if once(file):
                    yield file


def _has_data_set_without_file_meta(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return "SOPInstanceUID" in ds


def _classify(path: Path, report: SendReport) -> LocalInstance | None:
    """The instance in ``path``, or None with the reason recorded: not DICOM (skipped), unreadable, or a
    DICOM file the gateway would refuse (failed here, not sent)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
            fh.seek(0)
            part10 = head[128:132] == b"DICM" or starts_with_file_meta(head)
            try:
                header = read_header(fh)
            except DicomPartError as exc:
                if part10:
                    report.found += 1
                    code = f"0x{int(exc.reason):04X}"
                    report.fail(f"{path}: {exc.sop_instance_uid or '?'}: {code} {exc.detail} (not sent)")
                elif _has_data_set_without_file_meta(path):
                    report.found += 1
                    report.fail(
                        f"{path}: a DICOM data set without File Meta Information (not DICOM Part 10, which "
                        "STOW-RS requires); convert it first, for example with `dcmconv +F IN OUT` (not sent)"
                    )
                else:
                    report.skipped.append(f"{path}: not a DICOM file (no DICOM Part 10 header)")
                return None
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        report.unreadable.append(f"{path}: {exc.strerror or exc}")
        return None
    return LocalInstance(path, header.study_instance_uid, header.sop_instance_uid, size)


def scan(paths: Iterable[Path], report: SendReport) -> dict[str, list[LocalInstance]]:
    """Group the DICOM files under ``paths`` by study; everything else is recorded in ``report``."""
    studies: dict[str, list[LocalInstance]] = {}
    for path in iter_files(paths, report):
        instance = _classify(path, report)
        if instance is not None:
            report.found += 1
            studies.setdefault(instance.study_instance_uid, []).append(instance)
    return studies


def batches(studies: dict[str, list[LocalInstance]], size: int) -> list[list[LocalInstance]]:
    out: list[list[LocalInstance]] = []
    for instances in studies.values():
        for i in range(0, len(instances), size):
            out.append(instances[i : i + size])
    return out


class FileUnreadable(Exception):
    """A file of the batch could not be read while its request was being sent (nothing of it is claimed)."""

    def __init__(self, instance: LocalInstance, error: OSError) -> None:
        super().__init__(f"{instance.path}: {error.strerror or error}")
        self.instance = instance


async def multipart_body(instances: list[LocalInstance], boundary: str) -> AsyncIterator[bytes]:
    for inst in instances:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        try:
            fh = await asyncio.to_thread(inst.path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(fh.read, READ_CHUNK_BYTES):
                    yield chunk
            finally:
                fh.close()
        except OSError as exc:
            raise FileUnreadable(inst, exc) from exc
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag)
    value = element.get("Value", []) if isinstance(element, dict) else []
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _code(value: Any) -> str:
    return f"0x{value:04X}" if isinstance(value, int) else str(value)


def retry_after_s(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before sending a refused batch again: the server's Retry-After (seconds), at most
    ``MAX_RETRY_AFTER_S``; without one (or in the HTTP-date form), a doubling back-off."""
    raw = response.headers.get("retry-after", "")
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return min(TRANSPORT_BACKOFF_S * (1 << attempt), MAX_RETRY_AFTER_S)


class StowClient:
    def __init__(self, url: str, api_key: str, *, timeout_s: float = 300.0) -> None:
        self._url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, instances: list[LocalInstance]) -> httpx.Response:
        boundary = uuid.uuid4().hex
        return await self._http.post(
            f"{self._url}/dicomweb/studies/{instances[0].study_instance_uid}",
            content=multipart_body(instances, boundary),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )


def out_of_resources(response: httpx.Response, instances: list[LocalInstance]) -> list[LocalInstance]:
    """The instances of a batch that the server refused with 0xA700 (out of resources: storage away for a
    moment) while it stored others: sent again, alone, after the Retry-After. Empty when the answer is not a
    readable Store Instances Response."""
    if not response.headers.get("content-type", "").startswith("application/dicom+json"):
        return []
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    refused = {
        str(_first(item, SOP_INSTANCE))
        for item in _items(body, FAILED_SOP_SEQUENCE)
        if _first(item, FAILURE_REASON) == FailureReason.OUT_OF_RESOURCES
    }
    return [i for i in instances if i.sop_instance_uid in refused]


def record(
    response: httpx.Response,
    instances: list[LocalInstance],
    report: SendReport,
    *,
    resent: frozenset[str] = frozenset(),
) -> None:
    """Record what the server answered for each instance of one batch; ``resent`` names instances it refused
    that go out again in another request (not recorded as failed)."""
    study = instances[0].study_instance_uid
    if not response.headers.get("content-type", "").startswith("application/dicom+json"):
        detail = " ".join(response.text[:300].split())
        report.fail(f"study {study}: HTTP {response.status_code} {detail} ({len(instances)} instances)", len(instances))
        return
    try:
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        report.fail(
            f"study {study}: HTTP {response.status_code}, unreadable Store Instances Response ({exc}; "
            f"{len(instances)} instances)",
            len(instances),
        )
        return
    answered: set[str] = set()
    for item in _items(body, REFERENCED_SOP_SEQUENCE):
        report.stored += 1
        sop = _first(item, SOP_INSTANCE)
        answered.add(str(sop))
        if _first(item, WARNING_REASON) is not None:
            report.warnings.append(f"{sop}: warning {_code(_first(item, WARNING_REASON))}")
    unnamed = 0
    for item in _items(body, FAILED_SOP_SEQUENCE):
        sop = _first(item, SOP_INSTANCE)
        if sop is None:
            unnamed += 1
        answered.add(str(sop))
        if str(sop) in resent:
            continue
        comment = _first(item, ERROR_COMMENT) or ""
        report.fail(f"{sop or '?'}: {_code(_first(item, FAILURE_REASON) or 0)} {comment}".rstrip())
    # An instance the response does not mention is not stored (the same SOP twice in a batch is answered once).
    missing = {i.sop_instance_uid for i in instances} - answered
    if len(missing) > unnamed:
        count = len(missing) - unnamed
        report.fail(
            f"study {study}: HTTP {response.status_code}: the response does not mention {count} of the instances "
            f"sent (for example {sorted(missing)[0]}); treat them as not stored",
            count,
        )


async def send(
    paths: list[Path],
    *,
    url: str,
    api_key: str,
    batch: int = 10,
    concurrency: int = 4,
    retries: int = 3,
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

    async def attempt(group: list[LocalInstance]) -> None:
        study = group[0].study_instance_uid
        for tries in range(retries + 1):
            last = tries == retries
            try:
                response = await client.post(group)
            except FileUnreadable as exc:  # the request was abandoned: send the batch again without that file
                report.fail(f"{exc} (read while sending; not sent)")
                group = [i for i in group if i is not exc.instance]
                if not group:
                    return
                continue
            except httpx.TransportError as exc:
                if last:
                    report.fail(f"study {study}: {type(exc).__name__}: {exc} ({len(group)} instances)", len(group))
                    return
                report.retries += 1
                await asyncio.sleep(TRANSPORT_BACKOFF_S * (1 << tries))
                continue
            report.requests += 1
            report.bytes_sent += sum(i.size for i in group)
            if response.status_code in RETRY_STATUSES and not last:
                report.retries += 1
                await asyncio.sleep(retry_after_s(response, tries))
                continue
            again = [] if last else out_of_resources(response, group)
            record(response, group, report, resent=frozenset(i.sop_instance_uid for i in again))
            if not again:
                return
            report.retries += 1  # some stored, some refused for want of storage: those go again, alone
            await asyncio.sleep(retry_after_s(response, tries))
            group = again

    async def one(group: list[LocalInstance]) -> None:
        async with slots:
            try:
                await attempt(group)
            except Exception as exc:  # one batch's surprise must not stop the others
                report.fail(
                    f"study {group[0].study_instance_uid}: {type(exc).__name__}: {exc} ({len(group)} instances)",
                    len(group),
                )
            if on_progress is not None:
                on_progress(len(group), sum(i.size for i in group))

    try:
        await asyncio.gather(*(one(group) for group in batches(studies, batch)))
    finally:
        await client.aclose()
    return report
