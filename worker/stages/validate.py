"""ValidateMetadata: route the study to a model and plan the run: which instances it infers (those without
an output yet; every one for a full run), in how many PrepareTensors shards.

The plan goes to S3 (worker/formats/plan.py); the state carries the run's identifiers and counts only, so no
study is too large for Step Functions' payload limit. Each instance is checked against its manifest checksum
where it is read, in PrepareTensors: that checks the bytes decoded rather than the object's metadata.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from radstream import keys
from radstream import manifest as manifest_store
from radstream.clients import Clients
from radstream.errors import StorageUnavailable
from radstream.status import NO_MODEL_DETAIL, Run, StudyState
from radstream.telemetry import TelemetryEvent
from worker.formats.errors import ManifestInvalid, TransientError
from worker.formats.plan import Plan, PlanItem, effective, shard_count
from worker.models.spec import ModelSpec, load_specs, match_model
from worker.stages.common import outputs_indexes, timed


@lru_cache(maxsize=4)
def specs_in(repository: Path) -> tuple[ModelSpec, ...]:
    return tuple(load_specs(repository))


def _item(instance: manifest_store.ManifestInstance) -> PlanItem:
    return PlanItem(
        key=instance.key, sop=instance.sop_instance_uid, series=instance.series_instance_uid, sha256=instance.sha256
    )


def _what(instance: manifest_store.ManifestInstance) -> str:
    return f"modality {instance.modality or 'unknown'}, SOP class {instance.sop_class_uid}"


async def run(ctx: Clients, event: dict[str, Any]) -> dict[str, Any]:
    try:
        run = Run.of(event)
        keys.run_prefix(run.tenant, run.study, run.run_id)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestInvalid(f"the execution's input is not a run: {type(exc).__name__}") from None
    tenant, study = run.tenant, run.study
    with timed() as t:
        try:
            manifests = await manifest_store.study_manifests(ctx.images, tenant, study)
        except StorageUnavailable as exc:
            raise TransientError(exc.detail) from exc
        except ValueError as exc:
            raise ManifestInvalid(f"a manifest of the study is not valid: {type(exc).__name__}") from None
        instances = manifest_store.instances_of(manifests)
        specs = list(specs_in(ctx.settings.model_repository))
        routed = [match_model(specs, inst.modality or "", inst.sop_class_uid) for inst in instances]
        votes = Counter(spec.name for spec in routed if spec is not None)
        model = votes.most_common(1)[0][0] if votes else None
        taken = [inst for inst, spec in zip(instances, routed, strict=True) if spec is not None and spec.name == model]
        others = [
            (
                inst.sop_instance_uid,
                f"{NO_MODEL_DETAIL} (modality {inst.modality or 'unknown'}, SOP class {inst.sop_class_uid})",
            )
            for inst, spec in zip(instances, routed, strict=True)
            if spec is None or spec.name != model
        ]
        if model is None:
            action, items = "no_model", []
        else:
            covered = {} if run.full else effective(await outputs_indexes(ctx, tenant, study), model)
            items = [_item(inst) for inst in taken if inst.key not in covered]
            action = "infer" if items else "store"  # nothing new: the results are built again, as they are
        shards = shard_count(len(items))
        plan = Plan(
            run_id=run.run_id,
            seq=run.seq,
            full=run.full,
            model=model,
            items=items,
            routed=[_item(inst) for inst in taken],
            others=others,
            shards=shards,
        )
        await ctx.images.put_bytes(
            keys.plan_key(tenant, study, run.run_id), plan.model_dump_json().encode(), content_type="application/json"
        )
        await ctx.images.put_json(keys.covered_key(tenant, study, run.run_id), [m.request_id for m in manifests])
        await ctx.status.set_state(tenant, study, StudyState.PROCESSING, stage="validate", stage_ms=t.ms, model=model)
    await ctx.telemetry.send(
        TelemetryEvent(
            stage="validate",
            tenant=tenant,
            study_uid=study,
            duration_ms=t.ms,
            model=model,
            instances=len(instances),
            outcome="ok" if model else "no_model",
        )
    )
    received = [m.received_at for m in manifests]
    return {
        **run.document(),
        "action": action,
        "model": model,
        "shards": list(range(shards)),
        "shard_count": shards,
        "instances": len(items),
        "received_at": max(received).isoformat() if received else None,
    }
