"""The client adapter and the batcher against the real tritonserver."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from tests.inference.conftest import random_images
from worker.inference.batcher import Batcher
from worker.inference.client import InvalidInput, ModelMissing, ModelStatistics, TritonClient
from worker.inference.spec import ModelSpec


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
