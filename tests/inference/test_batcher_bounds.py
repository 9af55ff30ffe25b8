"""Batcher bounds without a server: bounded queue (backpressure), deadlines, closing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.inference.conftest import free_port, random_images
from worker.inference.batcher import Batcher, RetryPolicy
from worker.inference.errors import BatcherClosed
from worker.inference.triton.client import TritonClient
from worker.inference.triton.errors import InferenceTimeout
from worker.models.spec import ModelSpec


async def _eventually(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 10 s")


async def test_bounded_queue_deadlines_and_close(spec: ModelSpec) -> None:
    images = random_images(4, seed=21, spec=spec)
    async with TritonClient(f"127.0.0.1:{free_port()}", inference_timeout_s=1.0) as client:
        batcher = Batcher(
            client,
            spec,
            max_in_flight=1,
            max_queued=1,
            max_batch_size=1,
            retry=RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.05),
        )
        await batcher.start()
        # Occupies the only in-flight slot, retrying while nothing listens.
        first = asyncio.create_task(batcher.infer(images[0], timeout_s=60.0))
        await _eventually(lambda: batcher.stats.retries > 0)
        second = asyncio.create_task(batcher.infer(images[1], timeout_s=60.0))  # fills the queue
        await _eventually(lambda: batcher._queue.qsize() == 1)
        # The queue is full: a third caller waits (backpressure) and gets a typed timeout.
        with pytest.raises(InferenceTimeout):
            await batcher.infer(images[2], timeout_s=0.2)
        assert batcher._queue.qsize() == 1

        await batcher.close()
        with pytest.raises(BatcherClosed):
            await second
        with pytest.raises(BatcherClosed, match="while Triton was unavailable"):
            await first
        with pytest.raises(BatcherClosed):
            await batcher.infer(images[3])
