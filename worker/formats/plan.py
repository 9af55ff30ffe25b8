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

PREPARE_BATCH = 16  # instances per PrepareTensors shard, until there are MAX_SHARDS shards
MAX_SHARDS = 64  # the Map state's items (and results) are bounded whatever the study's size


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
        """The positions in ``items`` of one shard's instances (contiguous)."""
        size = math.ceil(len(self.items) / self.shards) if self.shards else 0
        return range(min(shard * size, len(self.items)), min((shard + 1) * size, len(self.items)))


def shard_count(items: int) -> int:
    return min(MAX_SHARDS, math.ceil(items / PREPARE_BATCH))


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
