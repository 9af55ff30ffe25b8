"""Lambda handlers: thin adapters over the stage functions (which the tests call directly).

Each raises the stage's typed error; Step Functions sees the class name as the error name and applies
the state machine's Retry/Catch. Nothing here returns an error as a value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from radstream.settings import get_settings
from worker.pipeline import prepare, start, store, validate
from worker.pipeline.context import StageContext, stage_context

Stage = Callable[[StageContext, dict[str, Any]], Awaitable[dict[str, Any]]]


def _run(stage: Stage, event: dict[str, Any]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with stage_context(get_settings()) as ctx:
            return await stage(ctx, event)

    return asyncio.run(main())


def start_pipeline(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(start.run, event)


def validate_metadata(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(validate.run, event)


def prepare_tensors(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(prepare.run, event)


def store_results(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(store.run, event)


def mark_failed(event: dict[str, Any], context: object) -> dict[str, Any]:
    return _run(store.mark_failed, event)
