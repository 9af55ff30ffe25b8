"""The Triton client: one gRPC channel (``tritonclient.grpc.aio``) behind a small typed interface.

Every failure becomes one of the exceptions of :mod:`worker.inference.triton.errors`. Inputs go through
system shared memory when Triton is on the same host (:mod:`worker.inference.triton.shared_memory`).

The readiness timeout (waiting for the server and model to come up) is separate from the inference
timeout (one request's deadline).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import aio as grpc_aio
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as system_shm

from worker.inference.triton.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelMissing,
    ModelNotReady,
    ServerError,
    ServerFault,
    TritonError,
    TritonUnavailable,
)
from worker.inference.triton.shared_memory import (
    SharedMemoryMode,
    _InputRegions,
    _missing_region,
    _Region,
    is_loopback,
)
from worker.inference.triton.tensors import ModelMetadata, TensorDescriptor, TensorInput, _Batch, triton_datatype

log = logging.getLogger("radstream.triton")

MAX_MESSAGE_BYTES = 2**31 - 1
FAULT_STATUSES = ("INTERNAL", "RESOURCE_EXHAUSTED", "ABORTED", "UNKNOWN")  # gRPC codes of faults that may pass
READY_POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class ModelStatistics:
    """Cumulative counters: ``inference_count`` images, ``execution_count`` batches the model ran."""

    inference_count: int
    execution_count: int
    success_count: int


def _translate(exc: InferenceServerException, model: str) -> TritonError:
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    text = f"{model}: {message}"
    if "UNAVAILABLE" in status or ("CANCELLED" in status and "shutdown" in message.lower()):
        return TritonUnavailable(text)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return InferenceTimeout(text)
    lowered = message.lower()
    if "shared memory" in lowered:
        return ServerError(f"{text} (shared-memory input)")
    if "unknown model" in lowered or "is not found" in lowered or "NOT_FOUND" in status:
        return ModelMissing(text)
    if "not ready" in lowered or "unavailable" in lowered:
        return ModelNotReady(text)
    if "INVALID_ARG" in status and any(w in lowered for w in ("data-type", "shape", "input", "dims")):
        return InvalidInput(text)
    if any(code in status for code in FAULT_STATUSES):
        return ServerFault(f"{text} ({status})")
    return ServerError(f"{text} ({status})" if status else text)


def _channel_args() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Reconnect quickly after a Triton restart instead of gRPC's default backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class TritonClient:
    """One gRPC channel to one Triton server. Create it inside the running event loop."""

    def __init__(
        self,
        url: str,
        *,
        inference_timeout_s: float = 30.0,
        readiness_timeout_s: float = 60.0,
        shared_memory: SharedMemoryMode = "auto",
    ) -> None:
        self.url = url
        self.inference_timeout_s = inference_timeout_s
        self.readiness_timeout_s = readiness_timeout_s
        self._client = grpc_aio.InferenceServerClient(url, channel_args=_channel_args())
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}
        use_shm = shared_memory == "on" or (
            shared_memory == "auto" and is_loopback(url) and os.path.isdir("/dev/shm")  # noqa: S108 - not a temp file
        )
        self._regions = _InputRegions(self._client) if use_shm else None

    @property
    def uses_shared_memory(self) -> bool:
        return self._regions is not None and not self._regions.disabled

    async def close(self) -> None:
        if self._regions is not None:
            await self._regions.close()
        await self._client.close()

    async def __aenter__(self) -> TritonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def is_model_ready(self, model: str, version: str = "") -> bool:
        try:
            return bool(await self._client.is_model_ready(model, version, client_timeout=self.inference_timeout_s))
        except InferenceServerException as exc:
            error = _translate(exc, model)
            if isinstance(error, ModelNotReady):
                return False
            raise error from None

    async def wait_until_ready(self, model: str, version: str = "", timeout_s: float | None = None) -> None:
        """Poll until the model is ready; raise the last reason it was not once ``timeout_s`` passed."""
        deadline = time.monotonic() + (self.readiness_timeout_s if timeout_s is None else timeout_s)
        last: TritonError = ModelNotReady(f"{model}: not ready")
        while True:
            try:
                if await self.is_model_ready(model, version):
                    return
                last = ModelNotReady(f"{model} version {version or 'latest'} is not ready")
            except TritonUnavailable as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise last
            await asyncio.sleep(READY_POLL_INTERVAL_S)

    async def metadata(self, model: str, version: str = "") -> ModelMetadata:
        key = (model, version)
        if key not in self._metadata:
            try:
                raw = await self._client.get_model_metadata(
                    model, version, as_json=True, client_timeout=self.inference_timeout_s
                )
            except InferenceServerException as exc:
                raise _translate(exc, model) from None

            def tensors(items: Sequence[Mapping[str, object]]) -> tuple[TensorDescriptor, ...]:
                return tuple(
                    TensorDescriptor(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))  # type: ignore[attr-defined]
                    for t in items
                )

            self._metadata[key] = ModelMetadata(
                name=raw["name"],
                versions=tuple(raw.get("versions", ())),
                inputs=tensors(raw.get("inputs", [])),
                outputs=tensors(raw.get("outputs", [])),
            )
        return self._metadata[key]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, TensorInput],
        outputs: Sequence[str],
        *,
        version: str = "",
        timeout_s: float | None = None,
        validate: bool = True,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one (batched) request. An input is an array, or a sequence of equally shaped items that form
        the batch (the batcher's case: with shared memory they are written straight into the region, without
        stacking them first). ``validate`` checks names, dtypes and shapes against the model's metadata first,
        so a malformed tensor fails with :class:`InvalidInput` before it is sent."""
        batches = {name: _Batch.of(name, value) for name, value in inputs.items()}
        if validate:
            meta = await self.metadata(model, version)
            expected = {t.name: t for t in meta.inputs}
            if set(batches) != set(expected):
                raise InvalidInput(f"{model}: inputs {sorted(batches)} but the model expects {sorted(expected)}")
            for name, batch in batches.items():
                expected[name].check_layout(batch.dtype, batch.shape)
        timeout = self.inference_timeout_s if timeout_s is None else timeout_s
        wanted = [InferRequestedOutput(name) for name in outputs]
        nbytes = sum(batch.aligned_nbytes for batch in batches.values())
        regions = self._regions
        region = regions.acquire(nbytes) if regions is not None else None
        try:
            for attempt in (1, 2):
                try:
                    if (
                        region is not None
                        and regions is not None
                        and not await self._registered(regions, region, timeout)
                    ):
                        regions.release(region)
                        region = None
                    result = await self._client.infer(
                        model,
                        self._request(batches, region),
                        model_version=version,
                        outputs=wanted,
                        client_timeout=timeout,
                    )
                    break
                except InferenceServerException as exc:
                    error = _translate(exc, model)
                    if regions is not None and (isinstance(error, TritonUnavailable) or _missing_region(exc)):
                        regions.forget_registrations()  # Triton may have restarted without them
                        if attempt == 1 and _missing_region(exc):
                            continue
                    raise error from None
        finally:
            if region is not None and regions is not None:
                regions.release(region)
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise ServerError(f"{model}: response lacks output {name!r}")
            arrays[name] = array
        return arrays

    async def _registered(self, regions: _InputRegions, region: _Region, timeout_s: float) -> bool:
        """Register ``region`` with Triton unless it is already. False when this Triton cannot map this host's
        shared memory (a loopback URL that is a tunnel, e.g. ``kubectl port-forward``): the client then sends
        every tensor inline. Triton being unreachable is raised as usual."""
        try:
            await regions.register(region, timeout_s)
        except InferenceServerException as exc:
            if isinstance(_translate(exc, "shared memory"), TritonUnavailable | InferenceTimeout):
                raise
            log.warning("Triton at %s cannot use this host's shared memory (%s); sending tensors inline", self.url, exc)
            regions.disabled = True
            return False
        return True

    def _request(self, batches: Mapping[str, _Batch], region: _Region | None) -> list[InferInput]:
        """The request's input tensors: written into ``region`` when there is one, else inline."""
        request = []
        offset = 0
        for name, batch in batches.items():
            tensor = InferInput(name, list(batch.shape), triton_datatype(batch.parts[0]))
            if region is None:
                tensor.set_data_from_numpy(batch.stacked())
            else:
                try:
                    system_shm.set_shared_memory_region(region.handle, list(batch.parts), offset=offset)
                except system_shm.SharedMemoryException as exc:
                    raise ServerError(f"writing {name!r} into shared memory {region.name}: {exc}") from exc
                tensor.set_shared_memory(region.name, batch.nbytes, offset=offset)
                offset += batch.aligned_nbytes
            request.append(tensor)
        return request

    async def statistics(self, model: str, version: str = "") -> ModelStatistics:
        try:
            raw = await self._client.get_inference_statistics(
                model, version, as_json=True, client_timeout=self.inference_timeout_s
            )
        except InferenceServerException as exc:
            raise _translate(exc, model) from None
        inference = execution = success = 0
        for entry in raw.get("model_stats", []):
            inference += int(entry.get("inference_count", 0))
            execution += int(entry.get("execution_count", 0))
            success += int(entry.get("inference_stats", {}).get("success", {}).get("count", 0))
        return ModelStatistics(inference_count=inference, execution_count=execution, success_count=success)
