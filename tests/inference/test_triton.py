"""The client adapter and the batcher against the real tritonserver."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import shared_memory as system_shm

from tests.inference.conftest import TritonServer, random_images
from worker.inference.batcher import Batcher
from worker.inference.triton.client import ModelStatistics, TritonClient
from worker.inference.triton.errors import InvalidInput, ModelMissing
from worker.inference.triton.shared_memory import (
    SHM_MAX_REGIONS,
    SHM_REGION_PREFIX,
    SharedMemoryMode,
    is_loopback,
    remove_stale_regions,
)
from worker.models.spec import ModelSpec


async def _statistics_settled(client: TritonClient, spec: ModelSpec, inference_count: int) -> ModelStatistics:
    """Triton records statistics after it sent the responses: wait (bounded) until they catch up."""
    for _ in range(100):
        stats = await client.statistics(spec.name, spec.version)
        if stats.inference_count >= inference_count:
            break
        await asyncio.sleep(0.05)
    return stats


def _outputs(spec: ModelSpec) -> list[str]:
    return [spec.outputs.probability.name, spec.outputs.heatmap.name]


async def test_metadata_matches_spec(client: TritonClient, spec: ModelSpec) -> None:
    await client.wait_until_ready(spec.name, spec.version)
    meta = await client.metadata(spec.name, spec.version)
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        (spec.input.name, spec.input.datatype, (-1, *spec.input.shape))
    ]
    assert {t.name for t in meta.outputs} == set(_outputs(spec))


async def test_triton_equals_onnxruntime(
    client: TritonClient, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    images = random_images(5, seed=1, spec=spec)
    got = await client.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    for name, want in zip(_outputs(spec), expected, strict=True):
        assert got[name].shape == want.shape
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)
    heatmap = got[spec.outputs.heatmap.name]
    assert heatmap.min() >= 0.0
    assert heatmap.max() <= 1.0


async def test_concurrent_callers_get_their_own_results_in_batches(
    client: TritonClient, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    callers = 32
    images = random_images(callers, seed=2, spec=spec)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    before = await client.statistics(spec.name, spec.version)
    async with Batcher(client, spec, max_wait_s=0.005, max_in_flight=2) as batcher:
        results = await asyncio.gather(*(batcher.infer(images[i]) for i in range(callers)))
    after = await _statistics_settled(client, spec, before.inference_count + callers)

    for i, result in enumerate(results):
        np.testing.assert_allclose(result.outputs[spec.outputs.probability.name], expected[0][i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.outputs[spec.outputs.heatmap.name], expected[1][i], rtol=1e-5, atol=1e-6)
    # Triton counted every image once, in fewer model executions than images: batches formed.
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == callers
    assert executions < callers
    assert max(batcher.stats.batch_sizes) > 1  # sizes seen
    assert sum(size * n for size, n in batcher.stats.batch_sizes.items()) == callers
    assert all(r.batch_size >= 1 for r in results)


async def test_batcher_refuses_wrong_dtype_and_shape(client: TritonClient, spec: ModelSpec) -> None:
    async with Batcher(client, spec) as batcher:
        image = random_images(1, seed=3, spec=spec)[0]
        with pytest.raises(InvalidInput, match="dtype float64"):
            await batcher.infer(image.astype(np.float64))
        with pytest.raises(InvalidInput, match="shape"):
            await batcher.infer(image[:, :64, :])
        # The batcher still works after refusing bad input.
        result = await batcher.infer(image)
        assert result.outputs[spec.outputs.probability.name].shape == (1,)


async def test_client_validates_against_model_metadata(client: TritonClient, spec: ModelSpec) -> None:
    images = random_images(2, seed=4, spec=spec)
    with pytest.raises(InvalidInput, match="dtype"):
        await client.infer(spec.name, {spec.input.name: images.astype(np.float64)}, _outputs(spec))
    with pytest.raises(InvalidInput, match="shape"):
        await client.infer(spec.name, {spec.input.name: images[:, :, :64, :]}, _outputs(spec))
    with pytest.raises(InvalidInput, match="inputs"):
        await client.infer(spec.name, {"pixels": images}, _outputs(spec))


async def test_server_side_rejection_is_typed(client: TritonClient, spec: ModelSpec) -> None:
    """With client-side checks off, Triton itself rejects the tensor; the error is still InvalidInput."""
    images = random_images(2, seed=5, spec=spec)
    with pytest.raises(InvalidInput):
        await client.infer(spec.name, {spec.input.name: images.astype(np.float64)}, _outputs(spec), validate=False)
    with pytest.raises(InvalidInput):
        await client.infer(spec.name, {spec.input.name: images[:, :, :64, :]}, _outputs(spec), validate=False)


async def test_missing_model_is_typed_and_not_retried(client: TritonClient, spec: ModelSpec) -> None:
    with pytest.raises(ModelMissing):
        await client.infer("no_such_model", {"image": random_images(1, 6, spec)}, ["probability"])
    missing = spec.model_copy(update={"name": "no_such_model"})
    async with Batcher(client, missing, request_timeout_s=30.0) as batcher:
        with pytest.raises(ModelMissing):
            await batcher.infer(random_images(1, seed=6, spec=spec)[0])
        assert batcher.stats.retries == 0
    assert not await client.is_model_ready("no_such_model")


def test_shared_memory_only_for_loopback() -> None:
    assert is_loopback("127.0.0.1:8001")
    assert is_loopback("localhost:8001")
    assert is_loopback("[::1]:8001")
    assert not is_loopback("triton.radstream.svc:8001")
    assert not is_loopback("10.0.0.5:8001")


async def test_shared_memory_inputs_equal_inline_inputs(
    triton: TritonServer, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    """The same tensors through system shared memory and inside the gRPC message give the same outputs;
    the regions are registered with Triton while the client lives and gone after it closed."""
    images = random_images(7, seed=8, spec=spec)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    async with TritonClient(triton.grpc_url, shared_memory="off") as inline:
        assert not inline.uses_shared_memory
        got_inline = await inline.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
    async with TritonClient(triton.grpc_url, shared_memory="auto") as shared:
        assert shared.uses_shared_memory
        got_shared = await shared.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
        assert shared._regions is not None
        (region,) = shared._regions._all
        written = system_shm.get_contents_as_numpy(region.handle, np.float32, list(images.shape))
        np.testing.assert_array_equal(written, images)  # the tensors went through the region
        ours = {region.name}
        registered = await shared._client.get_system_shared_memory_status(as_json=True)
        assert ours and ours <= set(registered.get("regions", {}))
    for name, want in zip(_outputs(spec), expected, strict=True):
        np.testing.assert_allclose(got_shared[name], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got_shared[name], got_inline[name])
    async with TritonClient(triton.grpc_url, shared_memory="off") as probe:
        left = await probe._client.get_system_shared_memory_status(as_json=True)
        assert not ours & set(left.get("regions", {}))


async def test_shared_memory_regions_are_registered_again_when_triton_forgot_them(
    triton: TritonServer, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    """A restarted Triton knows no regions: the client registers its regions again and the request succeeds."""
    images = random_images(3, seed=9, spec=spec)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    async with TritonClient(triton.grpc_url, shared_memory="on") as client:
        await client.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
        await client._client.unregister_system_shared_memory()  # what a restart does to the server's registry
        got = await client.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
    np.testing.assert_allclose(got[spec.outputs.probability.name], expected[0], rtol=1e-5, atol=1e-6)


async def test_more_concurrent_requests_than_regions_still_succeed(
    triton: TritonServer, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    """Past the pool's size, requests carry their tensors inline instead of waiting for a region."""
    async with TritonClient(triton.grpc_url, shared_memory="on") as client:
        batches = [random_images(2, seed=100 + i, spec=spec) for i in range(SHM_MAX_REGIONS * 2)]
        results = await asyncio.gather(
            *(client.infer(spec.name, {spec.input.name: b}, _outputs(spec), version=spec.version) for b in batches)
        )
        assert client._regions is not None
        assert len(client._regions._all) == SHM_MAX_REGIONS  # the other half went inline, none waited
    for batch, got in zip(batches, results, strict=True):
        want = onnx_session.run(_outputs(spec), {spec.input.name: batch})
        np.testing.assert_allclose(got[spec.outputs.probability.name], want[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["on", "off"])
async def test_batch_items_equal_the_stacked_batch(
    triton: TritonServer, spec: ModelSpec, onnx_session: ort.InferenceSession, mode: SharedMemoryMode
) -> None:
    """The batcher hands the client its items unstacked; inline and through shared memory they form the batch."""
    images = random_images(4, seed=11, spec=spec)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    async with TritonClient(triton.grpc_url, shared_memory=mode) as client:
        got = await client.infer(spec.name, {spec.input.name: list(images)}, _outputs(spec), version=spec.version)
        with pytest.raises(InvalidInput, match="batch items differ"):
            await client.infer(spec.name, {spec.input.name: [images[0], images[1, :, :64]]}, _outputs(spec))
        with pytest.raises(InvalidInput, match="empty batch"):
            await client.infer(spec.name, {spec.input.name: []}, _outputs(spec))
    for name, want in zip(_outputs(spec), expected, strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_regions_of_dead_clients_are_removed(tmp_path: Path) -> None:
    """A worker killed before it closed its client leaves its regions in /dev/shm; the next client removes
    them, and nothing that belongs to a live process or to someone else."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    names = [
        f"{SHM_REGION_PREFIX}{gone.pid}-1",
        f"{SHM_REGION_PREFIX}{os.getpid()}-1",
        "radstream8001_triton_python_backend_shm",
        f"{SHM_REGION_PREFIX}not-a-pid",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_regions(str(tmp_path)) == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


async def test_a_triton_that_cannot_map_our_shared_memory_gets_tensors_inline(
    triton: TritonServer, spec: ModelSpec, onnx_session: ort.InferenceSession
) -> None:
    """A loopback URL can be a tunnel to another host (``kubectl port-forward``), where Triton cannot open
    this host's regions: registration fails, and the client sends this and every later request inline."""
    images = random_images(3, seed=12, spec=spec)
    expected = onnx_session.run(_outputs(spec), {spec.input.name: images})
    async with TritonClient(triton.grpc_url, shared_memory="on") as client:
        assert client._regions is not None
        region = client._regions.acquire(images.nbytes)
        assert region is not None
        # What Triton on another host would see: no such region.
        await asyncio.to_thread(os.unlink, f"/dev/shm/{region.name}")
        client._regions.release(region)
        got = await client.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
        assert not client.uses_shared_memory
        again = await client.infer(spec.name, {spec.input.name: images}, _outputs(spec), version=spec.version)
    for result in (got, again):
        np.testing.assert_allclose(result[spec.outputs.probability.name], expected[0], rtol=1e-5, atol=1e-6)
