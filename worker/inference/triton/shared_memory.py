"""System shared-memory regions for request inputs.

When Triton runs on the same host (the local stack; a Triton sidecar sharing ``/dev/shm``), inputs travel
through system shared memory instead of inside the gRPC message: the client writes each request's tensors
into a region it registered with Triton once, and the request carries only the region's name. That saves
the serialisation and the parsing of a megabyte-sized protobuf per batch (about 5 % more images/s through
the local Triton, measured by ``loadtest/bench_inference.py``). ``shared_memory="auto"`` turns it on for
loopback URLs only; regions are re-registered after Triton restarts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as system_shm

log = logging.getLogger("radstream.triton")

SHM_MAX_REGIONS = 8  # at most this many requests at a time use shared memory; more go inline
SHM_MIN_REGION_BYTES = 1 << 20
SHM_ALIGN = 64
SHM_REGION_PREFIX = "radstream-input-"  # + "<pid>-<random>-<n>": the owner can be told from the name
SharedMemoryMode = Literal["auto", "on", "off"]
_region_ids = itertools.count(1)
_PROCESS_TOKEN = secrets.token_hex(4)


def is_loopback(url: str) -> bool:
    """True when a ``host:port`` gRPC URL names this host over loopback."""
    host = url.rsplit(":", 1)[0].strip("[]") if ":" in url else url
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Region:
    name: str
    handle: Any
    size: int
    registered: bool = False


class _InputRegions:
    """A small pool of system shared-memory regions for request inputs, owned by one client.

    A region is held by one request from writing its tensors until Triton answered, then reused. Regions
    are registered with Triton lazily and forgotten when Triton may have restarted (a restarted server
    knows none of them).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._free: list[_Region] = []
        self._all: list[_Region] = []
        self.disabled = False  # set when Triton cannot map this host's shared memory
        self._closed = False
        remove_stale_regions()

    def acquire(self, nbytes: int) -> _Region | None:
        """A free region of at least ``nbytes`` (created when needed), or None: the pool is full or the
        host has no room for another region (the request then carries its tensors inline)."""
        if self.disabled:
            return None
        for index, region in enumerate(self._free):
            if region.size >= nbytes:
                return self._free.pop(index)
        if len(self._all) >= SHM_MAX_REGIONS:
            return None
        size = max(SHM_MIN_REGION_BYTES, 1 << max(nbytes - 1, 0).bit_length())
        # The random part keeps a restarted container (often the same PID) off its predecessor's leftovers.
        name = f"{SHM_REGION_PREFIX}{os.getpid()}-{_PROCESS_TOKEN}-{next(_region_ids)}"
        try:
            handle = system_shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
        except Exception as exc:  # tritonclient raises its own SharedMemoryException (and OSError)
            log.warning("no shared-memory region of %d bytes (%s); sending tensors inline", size, exc)
            return None
        region = _Region(name, handle, size)
        self._all.append(region)
        return region

    def release(self, region: _Region) -> None:
        if not self._closed:  # a request that outlived close(): its region is gone already
            self._free.append(region)

    async def register(self, region: _Region, timeout_s: float) -> None:
        if region.registered:
            return
        try:
            await self._client.register_system_shared_memory(
                region.name, f"/{region.name}", region.size, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            if "already" not in str(exc).lower():  # registered before a reconnect: fine
                raise
        region.registered = True

    def forget_registrations(self) -> None:
        for region in self._all:
            region.registered = False

    async def close(self) -> None:
        self._closed = True
        for region in self._all:
            # Every region, not only those marked registered: after an outage Triton may still hold some.
            try:
                await self._client.unregister_system_shared_memory(region.name, client_timeout=5.0)
            except InferenceServerException as exc:  # Triton gone, or it never knew the region
                log.debug("unregistering %s: %s", region.name, exc)
            try:
                system_shm.destroy_shared_memory_region(region.handle)
            except (OSError, system_shm.SharedMemoryException) as exc:  # its name was removed already
                log.debug("destroying %s: %s", region.name, exc)
        self._all.clear()
        self._free.clear()


def remove_stale_regions(directory: str = "/dev/shm") -> list[str]:  # noqa: S108 - POSIX shm, not a temp file
    """Unlink input regions left behind by clients whose process is gone (killed before ``close``)."""
    removed = []
    for path in Path(directory).glob(f"{SHM_REGION_PREFIX}*"):
        pid_text = path.name[len(SHM_REGION_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _missing_region(exc: InferenceServerException) -> bool:
    return "shared memory" in str(exc).lower() and any(w in str(exc).lower() for w in ("unable to find", "not found"))
