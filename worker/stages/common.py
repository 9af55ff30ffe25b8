"""Helpers shared by the stages: reading the manifest, timing, stage telemetry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pydantic import ValidationError

from radstream import keys
from radstream import manifest as manifest_store
from radstream.clients import Clients
from radstream.errors import NotFound, StorageUnavailable
from radstream.manifest import Manifest
from worker.formats.errors import InstanceMissing, ManifestInvalid, TransientError
from worker.formats.plan import OutputsIndex, Plan

INDEX_READS_IN_FLIGHT = 16


@contextmanager
def instance_access(sop_instance_uid: str) -> Iterator[None]:
    """Storage errors while reading an instance, as the pipeline errors Step Functions retries."""
    try:
        yield
    except NotFound as exc:
        raise InstanceMissing(f"instance {sop_instance_uid} is not in the store") from exc
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc


async def read_manifest(ctx: Clients, key: str) -> Manifest:
    try:
        keys.parse_manifest_key(key)
        return await manifest_store.load(ctx.images, key)
    except NotFound:
        raise
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc
    except (ValueError, ValidationError) as exc:
        raise ManifestInvalid(f"manifest {key} is not valid: {type(exc).__name__}") from exc


@dataclass
class Timer:
    started: float

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3


@contextmanager
def timed() -> Iterator[Timer]:
    yield Timer(time.perf_counter())


async def read_plan(ctx: Clients, tenant: str, study: str, run_id: str) -> Plan:
    try:
        return Plan.model_validate_json(await ctx.images.get_bytes(keys.plan_key(tenant, study, run_id)))
    except NotFound as exc:
        raise ManifestInvalid(f"the plan of run {run_id} is missing") from exc
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc
    except (ValueError, ValidationError) as exc:
        raise ManifestInvalid(f"the plan of run {run_id} is not valid: {type(exc).__name__}") from None


async def outputs_indexes(ctx: Clients, tenant: str, study: str) -> list[OutputsIndex]:
    """The outputs index of every run of the study that inferred something."""
    try:
        names = [k for k in await ctx.images.list_keys(keys.outputs_prefix(tenant, study)) if k.endswith(".json")]
        slots = asyncio.Semaphore(INDEX_READS_IN_FLIGHT)

        async def read(key: str) -> OutputsIndex:
            async with slots:
                return OutputsIndex.model_validate_json(await ctx.images.get_bytes(key))

        return list(await asyncio.gather(*(read(key) for key in sorted(names))))
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc
    except (ValueError, ValidationError) as exc:
        raise ManifestInvalid(f"an outputs index of the study is not valid: {type(exc).__name__}") from None
