"""Nothing acknowledged is lost when the listener dies before an association's manifest is written.

Before the first instance of a study is acknowledged under a request id, the association's batch writes
an open-association record (``dimse/open/{tenant}/{request_id}.json``: the studies, the owner's host and
PID, when it was written); after that request's manifests are written, the record is removed. A record
left behind belongs to a listener that died (SIGKILL, a node lost) with acknowledged instances that no
manifest lists. At start, and every ``SWEEP_INTERVAL_S`` after, each listener takes the records of dead
owners (a PID of this host that is gone, or a record older than ``STALE_AFTER_S`` from another host), and
writes the manifest the owner would have written: every object of the record's studies that no manifest
lists and that the record's request created (its ``request-id`` metadata). The manifest's key is the one
the owner would have used, so a second sweep, or a revived owner, writes the same manifest again.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from radstream import keys
from radstream import manifest as manifest_store
from radstream.aws.s3 import ObjectStore
from radstream.dicom import read_header
from radstream.errors import NotFound, describe
from radstream.ingest.commit import Committer
from radstream.ingest.outcome import IngestOutcome, StoredInstance

log = logging.getLogger("radstream.dimse")

SWEEP_INTERVAL_S = 60.0
STALE_AFTER_S = 900.0  # a record from another host, not rewritten for this long: its owner is gone
HOST = socket.gethostname()


@dataclass(frozen=True)
class OpenAssociation:
    tenant: str
    request_id: str
    studies: tuple[str, ...]
    host: str
    pid: int
    written_at: float

    def document(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "request_id": self.request_id,
            "studies": list(self.studies),
            "host": self.host,
            "pid": self.pid,
            "written_at": self.written_at,
        }


async def record_open(images: ObjectStore, tenant: str, request_id: str, studies: list[str]) -> None:
    record = OpenAssociation(tenant, request_id, tuple(studies), HOST, os.getpid(), time.time())
    await images.put_json(keys.open_association_key(tenant, request_id), record.document())


async def record_closed(images: ObjectStore, tenant: str, request_id: str) -> None:
    await images.delete(keys.open_association_key(tenant, request_id))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead(record: OpenAssociation, now: float) -> bool:
    if record.host == HOST:
        return record.pid != os.getpid() and not _alive(record.pid)
    return now - record.written_at > STALE_AFTER_S


async def _unrecorded_of(images: ObjectStore, record: OpenAssociation, study: str) -> list[StoredInstance]:
    """The objects of ``study`` that ``record``'s request created and no manifest lists."""
    listed = set(await manifest_store.recorded_keys(images, record.tenant, study))
    found: list[StoredInstance] = []
    for key in await images.list_keys(f"instances/{record.tenant}/{study}/"):
        if key in listed:
            continue
        stored = await images.head(key)
        if stored.request_id != record.request_id or stored.sha256 is None:
            continue
        header = await asyncio.to_thread(read_header, io.BytesIO(await images.get_bytes(key)))
        found.append(StoredInstance(header, key, stored.size, stored.sha256, created=True))
    return found


async def sweep(images: ObjectStore, committer: Committer) -> int:
    """Write the manifests of dead owners' open associations; the number of instances so recovered."""
    recovered = 0
    now = time.time()
    for key in await images.list_keys(keys.OPEN_ASSOCIATIONS_PREFIX):
        try:
            data = json.loads(await images.get_bytes(key))
            record = OpenAssociation(
                str(data["tenant"]),
                str(data["request_id"]),
                tuple(str(s) for s in data["studies"]),
                str(data["host"]),
                int(data["pid"]),
                float(data["written_at"]),
            )
        except NotFound:
            continue  # its owner closed it meanwhile
        except (ValueError, KeyError, TypeError) as exc:
            log.error("open-association record %s is not valid (%s); left for an operator", key, type(exc).__name__)
            continue
        if not _dead(record, now):
            continue
        instances = [i for study in record.studies for i in await _unrecorded_of(images, record, study)]
        if instances:
            outcome = IngestOutcome(study_instance_uid=None, stored=instances)
            await committer.commit(record.tenant, record.request_id, outcome)
        await record_closed(images, record.tenant, record.request_id)
        recovered += len(instances)
        log.warning(
            "recovered %d acknowledged instances of a listener that stopped (pid %d on %s) before their manifest",
            len(instances),
            record.pid,
            record.host,
        )
    return recovered


async def sweep_forever(images: ObjectStore, committer: Committer, interval_s: float = SWEEP_INTERVAL_S) -> None:
    """:func:`sweep` now and every ``interval_s``; a sweep that fails is logged and tried again later."""
    while True:
        try:
            await sweep(images, committer)
        except Exception as exc:
            log.warning("open-association sweep failed: %s", describe(exc))
        await asyncio.sleep(interval_s)
