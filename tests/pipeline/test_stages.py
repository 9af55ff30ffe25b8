"""The stage functions called directly (the Lambda handlers are thin adapters over them)."""

from __future__ import annotations

import hashlib
import io
import json
import re

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from loadtest import synthetic
from radstream import keys
from radstream.clients import open_clients
from tests.pipeline.conftest import Stack
from worker.formats import outputs as output_codec
from worker.formats import prepared as prepared_codec
from worker.formats.errors import ManifestInvalid, TransientError
from worker.formats.types import InstanceOutput
from worker.stages import mark_failed, prepare, start, store, validate


def test_execution_name_is_deterministic_and_valid() -> None:
    key = keys.manifest_key("alpha", "1.2.3", "20260101T000000-abcdef123456")
    name = start.execution_name(key)
    assert name == start.execution_name(key)
    assert name != start.execution_name(keys.manifest_key("beta", "1.2.3", "20260101T000000-abcdef123456"))
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name)


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


async def test_validate_refuses_foreign_events_and_skips_withdrawn_manifests(stack: Stack) -> None:
    async with open_clients(stack.settings) as ctx:
        with pytest.raises(ManifestInvalid):
            await validate.run(ctx, {"bucket": "someone-elses-bucket", "key": "manifests/a/1.2/r.json"})
        withdrawn = keys.manifest_key("alpha", "1.2.3", "20260101T000000-withdrawn000")
        result = await validate.run(ctx, {"bucket": stack.settings.images_bucket, "key": withdrawn})
    assert result["action"] == "skip"
    assert result["batches"] == []


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


async def test_prepare_refuses_an_instance_that_does_not_match_its_manifest(stack: Stack) -> None:
    uids = synthetic.StudyUids.new()
    data = synthetic.to_bytes(synthetic.ct_slice(uids, 0, rows=64, cols=64))
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    s3 = stack.client("s3")
    # written straight to the bucket, for a study no other test uses (the execution the manifest starts
    # fails the same way, and writes nothing either)
    s3.put_object(
        Bucket=stack.settings.images_bucket, Key=keys.instance_key("alpha", uids.study, uids.series, sop), Body=data
    )
    manifest_key = stack.write_manifest(
        uids.study,
        uids.series,
        "20260101T000000-tampered0001",
        sop=sop,
        sop_class_uid=CTImageStorage,
        size=len(data),
        sha256=hashlib.sha256(data + b"changed").hexdigest(),
    )
    event = {"tenant": "alpha", "study": uids.study, "model": "lesion_detector", "manifest_key": manifest_key}
    async with open_clients(stack.settings) as ctx:
        with pytest.raises(ManifestInvalid, match=f"instance {sop} does not match its manifest checksum"):
            await prepare.run(ctx, {**event, "indices": [0]})
    listing = s3.list_objects_v2(Bucket=stack.settings.images_bucket, Prefix=f"work/alpha/{uids.study}/")
    assert listing["KeyCount"] == 0  # nothing prepared from bytes that failed the check


async def test_prepare_reports_an_undecodable_instance_and_goes_on(stack: Stack) -> None:
    """A batch whose only instance cannot be decoded returns it as failed, with the reason, and does not
    raise: whether the study fails is decided over all batches (the worker answers DecodeFailed when none
    prepared anything)."""
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=64, cols=64)
    ds.PixelData = ds.PixelData[:100]  # 100 bytes where 64 x 64 x 2 are declared
    data = synthetic.to_bytes(ds)
    s3 = stack.client("s3")
    s3.put_object(
        Bucket=stack.settings.images_bucket,
        Key=keys.instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID),
        Body=data,
    )
    manifest_key = stack.write_manifest(
        uids.study,
        uids.series,
        "20260101T000000-undecodable1",
        sop=ds.SOPInstanceUID,
        sop_class_uid=CTImageStorage,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    event = {"tenant": "alpha", "study": uids.study, "model": "lesion_detector", "manifest_key": manifest_key}
    async with open_clients(stack.settings) as ctx:
        result = await prepare.run(ctx, {**event, "indices": [0]})
    assert result["prepared"] == []
    assert [f["sop"] for f in result["failed"]] == [ds.SOPInstanceUID]
    assert result["failed"][0]["reason"]


@pytest.mark.parametrize("builds", [5, 1])
async def test_results_written_last_from_stale_outputs_are_rebuilt_and_name_their_own_sr(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, builds: int
) -> None:
    """Two executions of one study (two STOW requests). A lists the outputs (only its own); B's outputs are
    written and B's StoreResults completes; then A writes its results, last. A must notice B's outputs and
    rebuild, so the study's results hold both instances; and result.json must name an SR that exists and
    is the one it describes. With a single build allowed, the stale build must not end the stage: it
    raises TransientError, which Step Functions retries."""
    uids = synthetic.StudyUids.new()
    slices = [synthetic.ct_slice(uids, i, rows=64, cols=64) for i in range(2)]
    outputs = [_output(str(ds.SOPInstanceUID), 0.2) for ds in slices]
    outputs_a, outputs_b = (
        output_codec.encode([out], [synthetic.to_bytes(ds)]) for out, ds in zip(outputs, slices, strict=True)
    )
    event = {"tenant": "alpha", "study": uids.study, "model": "lesion_detector", "skipped": 0, "prepared": []}
    s3 = stack.client("s3")
    bucket = stack.settings.images_bucket
    s3.put_object(
        Bucket=bucket, Key=keys.outputs_key("alpha", uids.study, "20260101T000000-aaaaaaaaaaaa"), Body=outputs_a
    )

    async with open_clients(stack.settings) as ctx:
        await ctx.status.record_received("alpha", uids.study)
        original_put = type(ctx.results).put_bytes
        interleaved: list[str] = []

        async def put_bytes(self: object, key: str, body: bytes, *, content_type: str) -> None:
            if key.endswith("/result.json") and not interleaved:  # A's first result.json, about to be written
                interleaved.append(key)
                s3.put_object(
                    Bucket=bucket,
                    Key=keys.outputs_key("alpha", uids.study, "20260101T000001-bbbbbbbbbbbb"),
                    Body=outputs_b,
                )
                await store.run(ctx, {**event, "action": "infer", "request_id": "20260101T000001-bbbbbbbbbbbb"})
            await original_put(self, key, body, content_type=content_type)

        monkeypatch.setattr(type(ctx.results), "put_bytes", put_bytes)
        monkeypatch.setattr(store, "MAX_RESULT_BUILDS", builds)
        a_event = {**event, "action": "infer", "request_id": "20260101T000000-aaaaaaaaaaaa"}
        if builds == 1:
            with pytest.raises(TransientError, match="changed during 1 builds"):
                await store.run(ctx, a_event)
            await store.run(ctx, a_event)  # Step Functions' retry: the outputs are stable now
        else:
            await store.run(ctx, a_event)

        document = json.loads(await ctx.results.get_bytes(keys.result_key("alpha", uids.study, "result.json")))
        assert sorted(i["sop_instance_uid"] for i in document["instances"]) == sorted(
            o.sop_instance_uid for o in outputs
        )
        (report,) = document["structured_reports"]
        sr = pydicom.dcmread(io.BytesIO(await ctx.results.get_bytes(report["key"])))
        assert sr.SOPInstanceUID == report["sop_instance_uid"]
    assert interleaved  # the interleaving happened
