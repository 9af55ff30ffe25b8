"""StartPipeline: the EventBridge target for every manifest written. Asks for a run of the manifest's study
and starts it if none is in flight (worker/stages/runs.py).

S3 events are delivered at least once. A manifest that the study's last run covered (it lists the request
ids it read), while no run is in flight, asks for nothing: a duplicate event. With a run in flight it asks
for a run, which at worst finds nothing new to infer. A manifest whose request id ends in ``-full`` is a
reprocess: its run infers every instance again.
"""

from __future__ import annotations

import json
from typing import Any

from radstream import keys
from radstream.clients import Clients
from radstream.errors import NotFound, StorageUnavailable
from worker.formats.errors import ManifestInvalid, TransientError
from worker.stages import runs


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    key = event.get("key")
    if not isinstance(key, str):
        raise ManifestInvalid("the event names no object key")
    try:
        tenant, study, request_id = keys.parse_manifest_key(key)
    except ValueError:
        raise ManifestInvalid("the event's object key is not a manifest's") from None
    if covered := await _covered_by(ctx, tenant, study, request_id):
        return {"study": study, "started": False, "covered_by": covered}
    started = await runs.request(ctx, tenant, study, full=keys.is_full_request(request_id))
    if started is None:
        return {"study": study, "started": False}
    return {"study": study, "started": True, "run_id": started.run_id}


async def _covered_by(ctx: Clients, tenant: str, study: str, request_id: str) -> str | None:
    """The run that covered this manifest already, if no run is in flight: a duplicate event."""
    try:
        row = await ctx.status.run_row(tenant, study)
        if row is None or row.run_id is not None or row.last_run is None:
            return None
        covered = json.loads(await ctx.images.get_bytes(keys.covered_key(tenant, study, row.last_run)))
    except NotFound:  # expired with the run's work objects: asking for a run again is harmless
        return None
    except StorageUnavailable as exc:
        raise TransientError(exc.detail) from exc
    return row.last_run if isinstance(covered, list) and request_id in covered else None
