"""The stage functions called directly (the Lambda handlers are thin adapters over them)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest

from loadtest import synthetic
from radstream import keys
from radstream.clients import Clients, open_clients
from radstream.status import Run, StudyState
from tests.pipeline.conftest import Stack
from worker.formats import outputs as output_codec
from worker.formats import prepared as prepared_codec
from worker.formats.errors import ManifestInvalid
from worker.formats.plan import (
    MAX_SHARDS,
    PREPARE_BATCH,
    PREPARE_CONCURRENCY,
    OutputsIndex,
    Plan,
    PlanItem,
    ShardResult,
    effective,
    shard_count,
)
from worker.formats.types import InstanceOutput
from worker.stages import mark_failed, prepare, runs, store, validate


def test_execution_name_is_deterministic_and_valid() -> None:
    run_id = "20260101T000000-abcdef123456"
    name = runs.execution_name("alpha", "1.2.3", run_id)
    assert name == runs.execution_name("alpha", "1.2.3", run_id)
    assert name != runs.execution_name("beta", "1.2.3", run_id)
    assert name != runs.execution_name("alpha", "1.2.3", "20260101T000000-abcdef123457")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name)
    long_uid = "1." + "2" * 62
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", runs.execution_name("t" * 64, long_uid, run_id))


def test_failure_reason_reads_lambda_errors() -> None:
    cause = json.dumps({"errorMessage": "instance 1.2.3 is not in the store", "errorType": "InstanceMissing"})
    assert mark_failed.failure_reason({"Error": "InstanceMissing", "Cause": cause}) == (
        "InstanceMissing",
        "InstanceMissing: instance 1.2.3 is not in the store",
    )
    assert (
        mark_failed.failure_reason({"Error": "States.Timeout", "Cause": "no answer"})[1] == "States.Timeout: no answer"
    )
    assert mark_failed.failure_reason(None)[0] == "Unknown"


async def test_validate_refuses_an_input_that_is_not_a_run(stack: Stack) -> None:
    async with open_clients(stack.settings) as ctx:
        for event in (
            {"bucket": stack.settings.images_bucket, "key": "manifests/alpha/1.2/r.json"},  # the old input
            {"tenant": "alpha", "study": "1.2", "run_id": "../x", "seq": 1},
            {"tenant": "a/b", "study": "1.2", "run_id": "20260101T000000-abcdef123456", "seq": 1},
        ):
            with pytest.raises(ManifestInvalid, match="not a run"):
                await validate.run(ctx, event)


async def test_runs_of_one_study_are_coalesced_and_none_ends_leaving_a_request(stack: Stack) -> None:
    """The row's protocol: one run in flight; requests meanwhile fold into one follow-up; a run ends only
    when nothing was asked for since it began; repeating an end is harmless."""
    study = synthetic.StudyUids.new().study
    async with open_clients(stack.settings) as ctx:
        await ctx.status.request_run("alpha", study)
        first = await ctx.status.claim_run("alpha", study)
        assert first is not None and first.seq == 1 and not first.full
        for _ in range(3):  # three more requests while the first run is in flight
            await ctx.status.request_run("alpha", study, full=True)
            assert await ctx.status.claim_run("alpha", study) is None
        assert not await ctx.status.finish_run(first, StudyState.COMPLETED)  # asked for since it began
        follow = await ctx.status.hand_over("alpha", study, first.run_id)
        assert follow is not None and follow.seq == 2 and follow.full  # one follow-up for all three
        assert await ctx.status.hand_over("alpha", study, first.run_id) is None  # not the run in flight
        assert await ctx.status.finish_run(follow, StudyState.COMPLETED, result_location="s3://r/x")
        assert not await ctx.status.finish_run(follow, StudyState.COMPLETED)  # ended already
        row = await ctx.status.run_row("alpha", study)
        assert row is not None and row.run_id is None and row.last_run == follow.run_id and row.runs == 2
        status = await ctx.status.get("alpha", study, instances=0, series=0)
        assert status is not None and status.status is StudyState.COMPLETED and status.run_id == follow.run_id
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        assert [s async for _, s, _ in ctx.status.open_studies(before=tomorrow) if s == study] == []


def _output(sop: str, probability: float) -> InstanceOutput:
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[1, 2] = probability
    return InstanceOutput(
        sop_instance_uid=sop,
        model_name="lesion_detector",
        model_version="1",
        probability=probability,
        label="lesion" if probability >= 0.5 else "no lesion",
        heatmap=heatmap,
        peak_row=1.0,
        peak_col=2.0,
        timings_ms={"infer": 1.5},
    )


def test_outputs_carry_each_source_header_byte_for_byte() -> None:
    # DICOM values are padded with NUL bytes; a header ending in one must come back unchanged
    headers = [b"DICM\x00\x01header-one\x00", b"", b"two\x00\x00"]
    outputs = [_output(f"1.2.3.{i}", p) for i, p in enumerate((0.9, 0.1, 0.5))]
    decoded = output_codec.decode(output_codec.encode(outputs, headers))
    assert [header for _, header in decoded] == headers
    assert [out.sop_instance_uid for out, _ in decoded] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert [out.probability for out, _ in decoded] == [0.9, 0.1, 0.5]
    assert np.array_equal(decoded[0][0].heatmap, outputs[0].heatmap)
    assert decoded[2][0].timings_ms == {"infer": 1.5}
    with pytest.raises(ValueError, match="2 outputs but 1 headers"):
        output_codec.encode(outputs[:2], headers[:1])
    for garbage in (b"not a zip file", b"", b"PK\x03\x04truncated"):
        with pytest.raises(ValueError, match="not an outputs object"):
            output_codec.decode(garbage)
    older = io.BytesIO()  # an outputs object of a release that did not carry the headers
    np.savez_compressed(older, sop=np.array(["1.2.3"]), probability=np.array([0.5]))
    with pytest.raises(ValueError, match="no source headers"):
        output_codec.decode(older.getvalue())


def test_outputs_of_a_large_study_are_read_once_per_array(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each array of the object is read (and inflated) once, not once per instance: reading them per
    instance made StoreResults quadratic in the number of instances."""
    reads: list[str] = []
    original = np.lib.npyio.NpzFile.__getitem__

    def counted(self: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", counted)
    outputs = [_output(f"1.2.3.{i}", i / 300) for i in range(300)]
    decoded = output_codec.decode(output_codec.encode(outputs, [f"header {i}".encode() for i in range(300)]))
    assert [out.sop_instance_uid for out, _ in decoded] == [o.sop_instance_uid for o in outputs]
    assert decoded[299][1] == b"header 299"
    assert sorted(reads) == sorted(set(reads))  # every array exactly once
    assert len(reads) == 9


def test_prepared_object_holds_tensor_and_header() -> None:
    tensor = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    decoded_tensor, header = prepared_codec.decode(prepared_codec.encode(tensor, b"header\x00"))
    assert decoded_tensor.dtype == np.float32 and np.array_equal(decoded_tensor, tensor)
    assert header == b"header\x00"
    for garbage in (b"\x93NUMPY garbage", b"", b"PK\x03\x04truncated"):
        with pytest.raises(ValueError, match="not a prepared instance"):
            prepared_codec.decode(garbage)


async def _put_instance(stack: Stack, uids: synthetic.StudyUids, ds: pydicom.Dataset) -> PlanItem:
    data = synthetic.to_bytes(ds)
    key = keys.instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
    stack.client("s3").put_object(Bucket=stack.settings.images_bucket, Key=key, Body=data)
    return PlanItem(key=key, sop=ds.SOPInstanceUID, series=uids.series, sha256=hashlib.sha256(data).hexdigest())


async def _plan(ctx: Clients, run: Run, items: list[PlanItem], routed: list[PlanItem] | None = None) -> None:
    plan = Plan(
        run_id=run.run_id,
        seq=run.seq,
        full=run.full,
        model="lesion_detector",
        items=items,
        routed=routed or items,
        shards=1,
    )
    await ctx.images.put_bytes(
        keys.plan_key(run.tenant, run.study, run.run_id), plan.model_dump_json().encode(), content_type="x"
    )


async def test_prepare_refuses_an_instance_that_does_not_match_its_manifest(stack: Stack) -> None:
    uids = synthetic.StudyUids.new()
    item = await _put_instance(stack, uids, synthetic.ct_slice(uids, 0, rows=64, cols=64))
    run = Run("alpha", uids.study, "20260101T000000-tampered0001", 1, False)
    event = {**run.document(), "model": "lesion_detector", "shard": 0}
    async with open_clients(stack.settings) as ctx:
        await _plan(ctx, run, [item.model_copy(update={"sha256": hashlib.sha256(b"changed").hexdigest()})])
        with pytest.raises(ManifestInvalid, match=f"instance {item.sop} does not match its manifest checksum"):
            await prepare.run(ctx, event)
    listing = stack.client("s3").list_objects_v2(
        Bucket=stack.settings.images_bucket, Prefix=keys.run_prefix("alpha", uids.study, run.run_id)
    )
    assert [o["Key"].rsplit("/", 1)[1] for o in listing["Contents"]] == ["plan.json"]  # nothing prepared


async def test_prepare_reports_an_undecodable_instance_and_goes_on(stack: Stack) -> None:
    """A shard whose only instance cannot be decoded records it as failed, with a reason that quotes
    nothing of the data set, and does not raise: whether the study fails is decided over all shards (the
    worker answers DecodeFailed when none prepared anything)."""
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=64, cols=64)
    ds.PixelData = ds.PixelData[:100]  # 100 bytes where 64 x 64 x 2 are declared
    item = await _put_instance(stack, uids, ds)
    run = Run("alpha", uids.study, "20260101T000000-undecodable1", 1, False)
    async with open_clients(stack.settings) as ctx:
        await _plan(ctx, run, [item])
        answer = await prepare.run(ctx, {**run.document(), "model": "lesion_detector", "shard": 0})
        shard = ShardResult.model_validate_json(
            await ctx.images.get_bytes(keys.shard_key("alpha", uids.study, run.run_id, 0))
        )
    assert answer == {"shard": 0, "prepared": 0, "failed": 1}
    assert shard.prepared == []
    ((index, reason),) = shard.failed
    assert index == 0 and reason.startswith("cannot decode pixel data (Explicit VR Little Endian): ")
    assert " at " in reason  # the class and place, no library message


def _index_and_outputs(run: Run, items: list[PlanItem], slices: list[pydicom.Dataset], p: float) -> tuple[bytes, bytes]:
    outputs = [_output(str(ds.SOPInstanceUID), p) for ds in slices]
    data = output_codec.encode(outputs, [synthetic.to_bytes(ds) for ds in slices])
    index = OutputsIndex(
        run_id=run.run_id, seq=run.seq, model="lesion_detector", full=run.full, instances=[i.key for i in items]
    )
    return data, index.model_dump_json().encode()


async def test_results_list_every_run_and_keep_a_sop_uid_repeated_in_two_series(stack: Stack) -> None:
    """Two runs of one study (two requests), the second one's work/ objects gone but its plan: the
    results hold the instances of both, from outputs/. The same SOP Instance UID in two series keeps both
    results. A full run supersedes the runs before it."""
    uids = synthetic.StudyUids.new()
    other_series = synthetic.StudyUids(study=uids.study, series=pydicom.uid.generate_uid())
    first = synthetic.ct_slice(uids, 0, rows=64, cols=64)
    twin = synthetic.ct_slice(other_series, 0, rows=64, cols=64)
    twin.SOPInstanceUID = first.SOPInstanceUID  # repeated by the sender in another series
    third = synthetic.ct_slice(uids, 1, rows=64, cols=64)
    items = [await _put_instance(stack, uids, first), await _put_instance(stack, other_series, twin)]
    items.append(await _put_instance(stack, uids, third))
    assert items[0].key != items[1].key
    run1 = Run("alpha", uids.study, "20260101T000000-aaaaaaaaaaaa", 1, False)
    run2 = Run("alpha", uids.study, "20260101T000001-bbbbbbbbbbbb", 2, False)
    s3, bucket = stack.client("s3"), stack.settings.images_bucket
    for run, part, slices, p in ((run1, items[:1], [first], 0.1), (run2, items[1:], [twin, third], 0.7)):
        data, index = _index_and_outputs(run, part, slices, p)
        s3.put_object(Bucket=bucket, Key=keys.outputs_key("alpha", uids.study, run.seq, run.run_id), Body=data)
        s3.put_object(
            Bucket=bucket, Key=keys.outputs_key("alpha", uids.study, run.seq, run.run_id, ".json"), Body=index
        )
    async with open_clients(stack.settings) as ctx:
        await ctx.status.request_run("alpha", uids.study)
        claimed = await ctx.status.claim_run("alpha", uids.study)
        assert claimed is not None
        run = Run("alpha", uids.study, claimed.run_id, 3, False)
        await _plan(ctx, run, [], routed=items)
        answer = await store.run(ctx, {**run.document(), "action": "store", "model": "lesion_detector"})
        assert answer["follow_up"] is None
        document = json.loads(await ctx.results.get_bytes(keys.result_key("alpha", uids.study, "result.json")))
        status = await ctx.status.get("alpha", uids.study, instances=0, series=0)
    assert document["run_id"] == claimed.run_id
    assert sorted(
        (i["series_instance_uid"], i["sop_instance_uid"], i["probability"]) for i in document["instances"]
    ) == sorted(
        [
            (uids.series, first.SOPInstanceUID, 0.1),
            (other_series.series, twin.SOPInstanceUID, 0.7),
            (uids.series, third.SOPInstanceUID, 0.7),
        ]
    )
    assert status is not None and status.status is StudyState.COMPLETED
    indexes = [
        OutputsIndex.model_validate_json(_index_and_outputs(r, items, [first, twin, third], 0.9)[1]) for r in (run1,)
    ]
    full = OutputsIndex(
        run_id="20260101T000002-cccccccccccc", seq=3, model="lesion_detector", full=True, instances=[items[2].key]
    )
    latest = effective([*indexes, full], "lesion_detector")
    assert set(latest) == {items[2].key}  # the full run superseded the runs before it
    assert effective([*indexes, full], "another_model") == {}


@pytest.mark.parametrize("items", [0, 1, 15, 16, 17, 64, 65, 199, 200, 1000, 1024, 1025, 3000, 10_000])
def test_shards_cover_every_item_once_in_whole_waves_of_the_map(items: int) -> None:
    shards = shard_count(items)
    plan = Plan(
        run_id="r", seq=1, full=True, model="m", items=[_item(i) for i in range(items)], routed=[], shards=shards
    )
    ranges = [plan.shard_items(shard) for shard in range(shards)]
    assert [i for r in ranges for i in r] == list(range(items))  # each once, in order
    sizes = [len(r) for r in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert shards <= MAX_SHARDS
    if items <= MAX_SHARDS * PREPARE_BATCH:
        assert not sizes or max(sizes) <= PREPARE_BATCH
    if shards > PREPARE_CONCURRENCY:
        assert shards % PREPARE_CONCURRENCY == 0  # no last wave of one short shard
    assert plan.shard_items(shards) == range(0)


def test_the_map_state_runs_as_many_shards_at_once_as_the_shards_are_sized_for() -> None:
    definition = json.loads(Path("infra/statemachine/pipeline.asl.json").read_text())
    assert definition["States"]["PrepareTensors"]["MaxConcurrency"] == PREPARE_CONCURRENCY


def _item(i: int) -> PlanItem:
    return PlanItem(key=f"k/{i}", sop=f"1.2.{i}", series="1.2", sha256="0" * 64)
