"""ValidateMetadata: check the manifest, route the study to a model, split the work.

Each instance is checked against its manifest checksum where it is read, in PrepareTensors: that checks the
bytes decoded rather than the object's metadata, and saves a request per instance here.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from radstream import keys
from radstream.clients import Clients
from radstream.errors import NotFound
from radstream.status import StudyState
from radstream.telemetry import TelemetryEvent
from worker.formats.errors import ManifestInvalid
from worker.models.spec import ModelSpec, load_specs, match_model
from worker.stages.common import read_manifest, timed

PREPARE_BATCH = 16  # instances per PrepareTensors invocation (the Map fans out over these)


@lru_cache(maxsize=4)
def specs_in(repository: Path) -> tuple[ModelSpec, ...]:
    return tuple(load_specs(repository))


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    with timed() as t:
        bucket, key = event.get("bucket"), event.get("key")
        if bucket != ctx.images.bucket or not isinstance(key, str):
            raise ManifestInvalid(f"event names no manifest of bucket {ctx.images.bucket}: {bucket}/{key}")
        tenant, study, request_id = keys.parse_manifest_key(key)
        base = {"tenant": tenant, "study": study, "request_id": request_id, "manifest_key": key}
        try:
            manifest = await read_manifest(ctx, key)
        except NotFound:  # the gateway withdrew it (storage failed after the write): nothing to do
            return {**base, "action": "skip", "model": None, "batches": []}

        specs = list(specs_in(ctx.settings.model_repository))
        routed = [match_model(specs, inst.modality or "", inst.sop_class_uid) for inst in manifest.instances]
        votes = Counter(spec.name for spec in routed if spec is not None)
        if not votes:
            action, model, indices = "no_model", None, []
        else:
            model = votes.most_common(1)[0][0]
            action = "infer"
            indices = [i for i, spec in enumerate(routed) if spec is not None and spec.name == model]
        batches = [indices[i : i + PREPARE_BATCH] for i in range(0, len(indices), PREPARE_BATCH)]
        await ctx.status.set_state(tenant, study, StudyState.PROCESSING, stage="validate", stage_ms=t.ms, model=model)
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="validate",
            tenant=tenant,
            study_uid=study,
            duration_ms=t.ms,
            model=model,
            instances=len(manifest.instances),
            outcome="ok" if model else "no_model",
        )
    )
    return {
        **base,
        "action": action,
        "model": model,
        "batches": batches,
        "received_at": manifest.received_at.isoformat(),
        "skipped": len(manifest.instances) - len(indices),
    }
