"""Gather single-image requests from many concurrent callers into batches for one model.

Each caller awaits :meth:`Batcher.infer` with one tensor of the model's per-image shape and gets its own
outputs back. One collector task forms batches: it waits for a free in-flight slot (``max_in_flight``,
a semaphore), then for the first queued image, then up to ``max_wait_s`` for more. A batch holds at most
``ceil(outstanding / max_in_flight)`` images (outstanding = callers waiting, queued or in flight), capped
by the model's ``max_batch_size``: with 32 callers and 2 slots that is two batches of 16, so one batch is
serialised and sent while Triton computes the other, instead of every caller waiting on one batch of 32
and a slot idling (measured in ``loadtest/bench_inference.py``). Under heavy load batches are full.

Bounds and what happens when they are hit:

* ``max_queued`` images may wait; further callers wait in :meth:`infer` (backpressure) until there is room;
* ``max_in_flight`` batches are at Triton at any time;
* each caller's ``request_timeout_s`` covers queueing, retries and inference; past it the caller gets
  :class:`~worker.inference.triton.errors.InferenceTimeout` and its image is dropped from batches not yet sent.

While Triton is unreachable (:class:`TritonUnavailable`) or the model is loading (:class:`ModelNotReady`)
a batch is retried with exponential backoff until the earliest deadline in it. A missing model, a wrong
dtype or shape, or a server error fail the callers at once with the typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.inference.errors import BatcherClosed
from worker.inference.triton.client import TritonClient
from worker.inference.triton.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelMissing,
    ModelNotReady,
    ServerError,
    TritonError,
    TritonUnavailable,
)
from worker.models.spec import ModelSpec


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0


@dataclass(frozen=True)
class ItemResult:
    """One caller's outputs (batch dimension removed) and where its time went."""

    outputs: dict[str, npt.NDArray[Any]]
    queue_ms: float
    infer_ms: float
    batch_size: int
    attempts: int


@dataclass
class BatcherStats:
    """Cumulative counters; ``batch_sizes`` maps batch size -> number of batches sent (bounded)."""

    batches: int = 0
    images: int = 0
    retries: int = 0
    failures: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass
class _Pending:
    tensor: npt.NDArray[Any]
    future: asyncio.Future[ItemResult]
    enqueued: float
    deadline: float


class Batcher:
    def __init__(
        self,
        client: TritonClient,
        spec: ModelSpec,
        *,
        max_batch_size: int | None = None,
        max_wait_s: float = 0.002,
        max_in_flight: int = 2,
        max_queued: int = 1024,
        request_timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.max_batch_size = min(max_batch_size or spec.serving.max_batch_size, spec.serving.max_batch_size)
        self.max_wait_s = max_wait_s
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self.retry = retry or RetryPolicy()
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._closing = asyncio.Event()
        self._outstanding = 0
        self._outputs = [spec.outputs.probability.name, spec.outputs.heatmap.name]
        self._shape = tuple(spec.input.shape)
        self._dtype = np.dtype(spec.input.numpy_dtype)

    async def start(self) -> None:
        if self._collector is None:
            self._collector = asyncio.create_task(self._collect(), name=f"batcher-{self.spec.name}")

    async def close(self) -> None:
        """Stop forming batches, let batches already sent finish, fail images still queued.

        A batch waiting to retry (Triton unavailable) stops retrying and fails with :class:`BatcherClosed`.
        """
        self._closed = True
        self._closing.set()
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(BatcherClosed(f"{self.spec.name}: batcher closed"))

    async def __aenter__(self) -> Batcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def infer(self, tensor: npt.NDArray[Any], timeout_s: float | None = None) -> ItemResult:
        """Infer one image tensor of the model's per-image shape; raises a :class:`TritonError`."""
        if tensor.dtype != self._dtype:
            raise InvalidInput(f"{self.spec.name}: dtype {tensor.dtype} but the model expects {self._dtype}")
        if tuple(tensor.shape) != self._shape:
            raise InvalidInput(f"{self.spec.name}: shape {tensor.shape} but the model expects {self._shape}")
        if self._closed or self._collector is None:
            raise BatcherClosed(f"{self.spec.name}: batcher is not running")
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ItemResult] = loop.create_future()
        now = time.monotonic()
        item = _Pending(tensor=tensor, future=future, enqueued=now, deadline=now + timeout)
        self._outstanding += 1
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put(item)
                return await future
        except TimeoutError:
            raise InferenceTimeout(f"{self.spec.name}: no result within {timeout:.1f}s") from None
        finally:
            self._outstanding -= 1
            if not future.done():
                future.cancel()

    # ------------------------------------------------------------------------------------------ internals
    async def _next_batch(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        share = -(-self._outstanding // self.max_in_flight)  # ceil: keep every in-flight slot busy
        limit = max(1, min(self.max_batch_size, share))
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [item for item in batch if not item.future.done()]

    async def _collect(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            tensors = [item.tensor for item in batch]  # the client stacks them, or writes them to shared memory
            started = time.monotonic()
            outputs, attempts = await self._send(tensors, batch)
            finished = time.monotonic()
            self.stats.batches += 1
            self.stats.images += len(batch)
            self.stats.batch_sizes[len(batch)] = self.stats.batch_sizes.get(len(batch), 0) + 1
            for k, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(
                        ItemResult(
                            outputs={name: array[k] for name, array in outputs.items()},
                            queue_ms=(started - item.enqueued) * 1e3,
                            infer_ms=(finished - started) * 1e3,
                            batch_size=len(batch),
                            attempts=attempts,
                        )
                    )
        except Exception as exc:  # every caller must hear about the failure, whatever it is
            self.stats.failures += 1
            error = exc if isinstance(exc, TritonError) else ServerError(f"{self.spec.name}: {exc!r}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        finally:
            self._slots.release()

    async def _send(
        self, tensors: list[npt.NDArray[Any]], batch: list[_Pending]
    ) -> tuple[dict[str, npt.NDArray[Any]], int]:
        backoff = self.retry.initial_backoff_s
        attempts = 0
        while True:
            attempts += 1
            waiting = [item.deadline for item in batch if not item.future.done()]
            remaining = min(waiting, default=0.0) - time.monotonic()
            if remaining <= 0:
                raise InferenceTimeout(f"{self.spec.name}: deadline passed before the batch was sent")
            deadline = time.monotonic() + remaining
            try:
                result = await self.client.infer(
                    self.spec.name,
                    {self.spec.input.name: tensors},
                    self._outputs,
                    version=self.spec.version,
                    timeout_s=remaining,
                )
                return result, attempts
            except (TritonUnavailable, ModelNotReady) as exc:
                if isinstance(exc, ModelMissing):
                    raise
                if all(item.future.done() for item in batch):
                    raise
                if time.monotonic() + backoff >= deadline:
                    raise
                self.stats.retries += 1
                try:
                    await asyncio.wait_for(self._closing.wait(), backoff)
                except TimeoutError:
                    pass
                else:
                    raise BatcherClosed(f"{self.spec.name}: batcher closed while Triton was unavailable") from exc
                backoff = min(backoff * self.retry.multiplier, self.retry.max_backoff_s)
