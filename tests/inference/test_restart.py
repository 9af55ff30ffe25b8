"""Triton stopped mid-run: typed errors while it is down, retries succeed once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.inference.conftest import TritonServer, random_images
from worker.inference.batcher import Batcher, RetryPolicy
from worker.inference.triton.client import TritonClient
from worker.inference.triton.errors import InferenceTimeout, TritonError, TritonUnavailable
from worker.models.spec import ModelSpec


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    """A server of this test's own, so stopping it does not disturb the session server."""
    server = TritonServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_stop_and_restart(own_triton: TritonServer, spec: ModelSpec) -> None:
    images = random_images(8, seed=11, spec=spec)
    async with TritonClient(own_triton.grpc_url, inference_timeout_s=10.0) as client:
        retry = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2)
        async with Batcher(client, spec, request_timeout_s=60.0, retry=retry) as batcher:
            before = await batcher.infer(images[0])

            await asyncio.to_thread(own_triton.stop)
            # Direct calls fail fast with a typed error.
            with pytest.raises(TritonUnavailable):
                await client.infer(spec.name, {spec.input.name: images[:1]}, [spec.outputs.probability.name])
            assert not await _model_ready(client, spec)
            # A caller with a short deadline gets a typed error, not a hang.
            with pytest.raises((TritonUnavailable, InferenceTimeout)):
                await batcher.infer(images[1], timeout_s=0.5)

            # Callers waiting while Triton is down are retried and succeed after the restart.
            pending = [asyncio.create_task(batcher.infer(images[i])) for i in range(8)]
            retries = batcher.stats.retries
            for _ in range(200):
                if batcher.stats.retries > retries:
                    break
                await asyncio.sleep(0.05)
            assert batcher.stats.retries > retries, "the batcher should be retrying while Triton is down"
            assert not any(task.done() for task in pending)

            await asyncio.to_thread(own_triton.start)
            results = await asyncio.gather(*pending)

    assert all(result.attempts > 1 for result in results)
    np.testing.assert_allclose(
        results[0].outputs[spec.outputs.probability.name], before.outputs[spec.outputs.probability.name], rtol=1e-6
    )


async def _model_ready(client: TritonClient, spec: ModelSpec) -> bool:
    try:
        return await client.is_model_ready(spec.name, spec.version)
    except TritonError:
        return False
