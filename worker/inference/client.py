"""The Triton client adapter: ``tritonclient.grpc.aio`` behind a small typed interface.

Nothing outside this module imports tritonclient. Every failure becomes one of the exceptions below, so
callers can tell "Triton is down, retry later" from "this request can never succeed".

When Triton runs on the same host (the local stack; a Triton sidecar sharing ``/dev/shm``), inputs travel
through system shared memory instead of inside the gRPC message: the client writes each request's tensors
into a region it registered with Triton once, and the request carries only the region's name. That saves
the serialisation and the parsing of a megabyte-sized protobuf per batch (about 5 % more images/s through
the local Triton, measured by ``loadtest/bench_inference.py``). ``shared_memory="auto"`` turns it on for
loopback URLs only; regions are re-registered after Triton restarts.

The readiness timeout (waiting for the server and model to come up) is separate from the inference
timeout (one request's deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import aio as grpc_aio
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as system_shm

log = logging.getLogger("radstream.triton")

MAX_MESSAGE_BYTES = 2**31 - 1
READY_POLL_INTERVAL_S = 0.1
SHM_MAX_REGIONS = 8  # at most this many requests at a time use shared memory; more go inline
SHM_MIN_REGION_BYTES = 1 << 20
SHM_ALIGN = 64
SHM_REGION_PREFIX = "radstream-input-"  # + "<pid>-<random>-<n>": the owner can be told from the name
SharedMemoryMode = Literal["auto", "on", "off"]
_region_ids = itertools.count(1)
_PROCESS_TOKEN = secrets.token_hex(4)


# --------------------------------------------------------------------------------------------- errors
class TritonError(Exception):
    """Base of every error raised by the adapter."""


class TritonUnavailable(TritonError):
    """The server cannot be reached (down, restarting, refusing connections). Retrying may help."""


class ModelNotReady(TritonError):
    """The server is up but the model is not ready (loading, unloading, failed to load)."""


class ModelMissing(ModelNotReady):
    """The server does not know this model or version."""


class InferenceTimeout(TritonError):
    """The request did not complete within its deadline."""


class InvalidInput(TritonError):
    """A tensor has the wrong name, datatype or shape for the model."""


class ServerError(TritonError):
    """Triton or the model failed while handling a valid request."""


# -------------------------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class TensorDescriptor:
    """Name, Triton datatype and shape of a tensor; ``-1`` marks a variable dimension (e.g. batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def check(self, array: npt.NDArray[Any]) -> None:
        """Raise :class:`InvalidInput` unless ``array`` matches this descriptor."""
        self.check_layout(array.dtype, tuple(array.shape))

    def check_layout(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        expected = _NUMPY_OF.get(self.datatype)
        if expected is None or dtype != np.dtype(expected):
            raise InvalidInput(f"tensor {self.name!r}: dtype {dtype} but the model expects {self.datatype}")
        if len(shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        ):
            raise InvalidInput(f"tensor {self.name!r}: shape {shape} but the model expects {self.shape}")


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[TensorDescriptor, ...]
    outputs: tuple[TensorDescriptor, ...]


@dataclass(frozen=True)
class ModelStatistics:
    """Cumulative counters: ``inference_count`` images, ``execution_count`` batches the model ran."""

    inference_count: int
    execution_count: int
    success_count: int


_NUMPY_OF = {
    "FP32": "float32",
    "FP16": "float16",
    "FP64": "float64",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}
_TRITON_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items()}


TensorInput = npt.NDArray[Any] | Sequence[npt.NDArray[Any]]


@dataclass(frozen=True)
class _Batch:
    """One input tensor as the parts that make it up: a whole array, or equally shaped items of a batch
    that are stacked along a new first axis (directly into shared memory when the request uses it)."""

    parts: tuple[npt.NDArray[Any], ...]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)

    @property
    def aligned_nbytes(self) -> int:
        """Room it takes in a shared-memory region, where each tensor starts on a ``SHM_ALIGN`` boundary."""
        return -(-self.nbytes // SHM_ALIGN) * SHM_ALIGN

    @classmethod
    def of(cls, name: str, value: TensorInput) -> _Batch:
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            return cls((array,), tuple(array.shape), array.dtype)
        items = tuple(np.ascontiguousarray(item) for item in value)
        if not items:
            raise InvalidInput(f"tensor {name!r}: an empty batch")
        first = items[0]
        for item in items[1:]:
            if item.dtype != first.dtype or item.shape != first.shape:
                raise InvalidInput(
                    f"tensor {name!r}: batch items differ ({item.dtype} {item.shape} vs {first.dtype} {first.shape})"
                )
        return cls(items, (len(items), *first.shape), first.dtype)

    def stacked(self) -> npt.NDArray[Any]:
        return self.parts[0].reshape(self.shape) if len(self.parts) == 1 else np.stack(self.parts)


def triton_datatype(array: npt.NDArray[Any]) -> str:
    try:
        return _TRITON_OF[array.dtype]
    except KeyError:
        raise InvalidInput(f"dtype {array.dtype} has no Triton datatype") from None


# -------------------------------------------------------------------------------------------- mapping
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


def is_loopback(url: str) -> bool:
    """True when a ``host:port`` gRPC URL names this host over loopback."""
    host = url.rsplit(":", 1)[0].strip("[]") if ":" in url else url
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Region:
    name: str
    handle: Any
    size: int
    registered: bool = False


class _InputRegions:
    """A small pool of system shared-memory regions for request inputs, owned by one client.

    A region is held by one request from writing its tensors until Triton answered, then reused. Regions
    are registered with Triton lazily and forgotten when Triton may have restarted (a restarted server
    knows none of them).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._free: list[_Region] = []
        self._all: list[_Region] = []
        self.disabled = False  # set when Triton cannot map this host's shared memory
        self._closed = False
        remove_stale_regions()

    def acquire(self, nbytes: int) -> _Region | None:
        """A free region of at least ``nbytes`` (created when needed), or None: the pool is full or the
        host has no room for another region (the request then carries its tensors inline)."""
        if self.disabled:
            return None
        for index, region in enumerate(self._free):
            if region.size >= nbytes:
                return self._free.pop(index)
        if len(self._all) >= SHM_MAX_REGIONS:
            return None
        size = max(SHM_MIN_REGION_BYTES, 1 << max(nbytes - 1, 0).bit_length())
        # The random part keeps a restarted container (often the same PID) off its predecessor's leftovers.
        name = f"{SHM_REGION_PREFIX}{os.getpid()}-{_PROCESS_TOKEN}-{next(_region_ids)}"
        try:
            handle = system_shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
        except Exception as exc:  # tritonclient raises its own SharedMemoryException (and OSError)
            log.warning("no shared-memory region of %d bytes (%s); sending tensors inline", size, exc)
            return None
        region = _Region(name, handle, size)
        self._all.append(region)
        return region

    def release(self, region: _Region) -> None:
        if not self._closed:  # a request that outlived close(): its region is gone already
            self._free.append(region)

    async def register(self, region: _Region, timeout_s: float) -> None:
        if region.registered:
            return
        try:
            await self._client.register_system_shared_memory(
                region.name, f"/{region.name}", region.size, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            if "already" not in str(exc).lower():  # registered before a reconnect: fine
                raise
        region.registered = True

    def forget_registrations(self) -> None:
        for region in self._all:
            region.registered = False

    async def close(self) -> None:
        self._closed = True
        for region in self._all:
            # Every region, not only those marked registered: after an outage Triton may still hold some.
            try:
                await self._client.unregister_system_shared_memory(region.name, client_timeout=5.0)
            except InferenceServerException as exc:  # Triton gone, or it never knew the region
                log.debug("unregistering %s: %s", region.name, exc)
            try:
                system_shm.destroy_shared_memory_region(region.handle)
            except (OSError, system_shm.SharedMemoryException) as exc:  # its name was removed already
                log.debug("destroying %s: %s", region.name, exc)
        self._all.clear()
        self._free.clear()


def remove_stale_regions(directory: str = "/dev/shm") -> list[str]:  # noqa: S108 - POSIX shm, not a temp file
    """Unlink input regions left behind by clients whose process is gone (killed before ``close``)."""
    removed = []
    for path in Path(directory).glob(f"{SHM_REGION_PREFIX}*"):
        pid_text = path.name[len(SHM_REGION_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _missing_region(exc: InferenceServerException) -> bool:
    return "shared memory" in str(exc).lower() and any(w in str(exc).lower() for w in ("unable to find", "not found"))


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
