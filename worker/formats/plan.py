"""What one run works on, and what the runs of a study have inferred.

* The plan (``work/.../runs/{run}/plan.json``): written by ValidateMetadata, read by PrepareTensors, the
  worker and StoreResults. The state machine carries only the run's identifiers and the number of shards,
  never lists that grow with the study (Step Functions' 256 KB payload limit).
* A shard's result (``.../shard-{n}.json``): which plan items one PrepareTensors invocation prepared, and
  why the others could not be.
* An outputs index (``outputs/{t}/{s}/{seq}-{run}.json``): which instances a run's outputs object covers, in
  its order. The worker writes it after the outputs object: an index names only outputs that exist.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

PREPARE_BATCH = 16  # instances per PrepareTensors shard at most, until there are MAX_SHARDS shards
MAX_SHARDS = 64  # the Map state's items (and results) are bounded whatever the study's size
PREPARE_CONCURRENCY = 4  # the PrepareTensors Map state's MaxConcurrency (infra/statemachine/pipeline.asl.json)


class PlanItem(BaseModel):
    key: str  # the instance object's key: unique in the study, where the SOP Instance UID may not be
    sop: str
    series: str
    sha256: str


class Plan(BaseModel):
    run_id: str
    seq: int
    full: bool
    model: str | None
    items: list[PlanItem] = Field(description="the instances this run infers")
    routed: list[PlanItem] = Field(description="every instance of the study the model takes")
    others: list[tuple[str, str]] = Field(default_factory=list, description="(SOP UID, why no model takes it)")
    shards: int

    def shard_items(self, shard: int) -> range:
        """The positions in ``items`` of one shard's instances: contiguous, shard sizes differing by one at most."""
        if not 0 <= shard < self.shards:
            return range(0)
        return range(shard * len(self.items) // self.shards, (shard + 1) * len(self.items) // self.shards)


def shard_count(items: int) -> int:
    """Shards of at most PREPARE_BATCH instances, in whole waves of the Map state: 200 instances are 16
    shards of 12 or 13 (four waves of four), not 12 of 16 and a last wave of one shard of 8, which takes
    about as long as a full wave while the other three invocations' capacity stands idle."""
    shards = min(MAX_SHARDS, math.ceil(items / PREPARE_BATCH))
    if shards > PREPARE_CONCURRENCY:
        shards = min(MAX_SHARDS, math.ceil(shards / PREPARE_CONCURRENCY) * PREPARE_CONCURRENCY)
    return shards


class ShardResult(BaseModel):
    prepared: list[tuple[int, int, int]] = Field(default_factory=list, description="(item, rows, columns)")
    failed: list[tuple[int, str]] = Field(default_factory=list, description="(item, why it was not prepared)")


class OutputsIndex(BaseModel):
    run_id: str
    seq: int
    model: str
    full: bool
    instances: list[str] = Field(description="instance keys, in the order of the outputs object")


def effective(indexes: list[OutputsIndex], model: str) -> dict[str, tuple[OutputsIndex, int]]:
    """For each instance, the latest output of ``model``: (its index, its position in that outputs object).
    A full run (a reprocess) supersedes every run before it."""
    ordered = sorted((index for index in indexes if index.model == model), key=lambda index: index.seq)
    fulls = [i for i, index in enumerate(ordered) if index.full]
    latest: dict[str, tuple[OutputsIndex, int]] = {}
    for index in ordered[fulls[-1] :] if fulls else ordered:
        for position, key in enumerate(index.instances):
            latest[key] = (index, position)
    return latest
