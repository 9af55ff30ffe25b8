"""Lambda handlers: thin adapters over the stage functions (which the tests call directly).

Each raises the stage's typed error; Step Functions sees the class name as the error name and applies
the state machine's Retry/Catch. Nothing here returns an error as a value. Storage that did not answer
(``StorageUnavailable``: an S3 503, a DynamoDB 5xx or throttling), wherever a stage met it, is raised as
``TransientError``, the name every Lambda state retries: one hiccup of a status write must not fail a study.

Clients are created once per runtime and reused by every invocation (Lambda's init phase): one event
loop (uvloop) runs in a background thread and every invocation is a coroutine on it. Building aioboto3
clients costs tens of milliseconds each, far more than a stage's own work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import uvloop

from radstream.clients import Clients, open_clients
from radstream.dicom import keep_values_out_of_logs, read_values_unvalidated
from radstream.errors import StorageUnavailable, describe, frames
from radstream.settings import get_settings
from worker.formats.errors import InternalError, PipelineError, TransientError
from worker.stages import export, prepare, start, store, validate
from worker.stages import mark_failed as mark_failed_stage
from worker.stages import reconcile as reconcile_stage

log = logging.getLogger(__name__)

Stage = Callable[[Clients, dict[str, Any]], Awaitable[dict[str, Any]]]


class _Runtime:
    def __init__(self) -> None:
        read_values_unvalidated()
        keep_values_out_of_logs()
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="lambda-runtime", daemon=True).start()
        self._stack = AsyncExitStack()
        self._context: Clients | None = None
        self._lock: asyncio.Lock | None = None

    async def context(self) -> Clients:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._context is None:
                self._context = await self._stack.enter_async_context(open_clients(get_settings()))
        return self._context

    def run(self, stage: Stage, event: dict[str, Any]) -> dict[str, Any]:
        async def invoke() -> dict[str, Any]:
            try:
                return await stage(await self.context(), event)
            except StorageUnavailable as exc:
                raise TransientError(exc.detail) from exc
            except PipelineError:
                raise
            except Exception as exc:  # its message may quote DICOM values: the name and place only
                log.error("unexpected %s\n%s", describe(exc), frames(exc))
                raise InternalError(describe(exc)) from None

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result()


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _run(stage: Stage, event: dict[str, Any]) -> dict[str, Any]:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime()
    return _runtime.run(stage, event)


def start_pipeline(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(start.run, event)


def validate_metadata(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(validate.run, event)


def prepare_tensors(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(prepare.run, event)


def store_results(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(store.run, event)


def mark_failed(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(mark_failed_stage.run, event)


def reconcile(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(reconcile_stage.run, event)


def export_results(event: dict[str, Any], context: object) -> dict[str, Any]:
    """One destination's branch: the send (Retry), or, with the Catch's ``error``, the failure recorded."""
    return _run(export.failed if "error" in event else export.run, event)
