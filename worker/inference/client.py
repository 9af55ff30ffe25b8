"""The Triton client adapter: ``tritonclient.grpc.aio`` behind a small typed interface.

Nothing outside this module imports tritonclient. Every failure becomes one of the exceptions below, so
callers can tell "Triton is down, retry later" from "this request can never succeed".

The readiness timeout (waiting for the server and model to come up) is separate from the inference
timeout (one request's deadline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import aio as grpc_aio
from tritonclient.utils import InferenceServerException

MAX_MESSAGE_BYTES = 2**31 - 1
READY_POLL_INTERVAL_S = 0.1


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
        expected = _NUMPY_OF.get(self.datatype)
        if expected is None or array.dtype != np.dtype(expected):
            raise InvalidInput(f"tensor {self.name!r}: dtype {array.dtype} but the model expects {self.datatype}")
        if len(array.shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        ):
            raise InvalidInput(f"tensor {self.name!r}: shape {array.shape} but the model expects {self.shape}")


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


class TritonClient:
    """One gRPC channel to one Triton server. Create it inside the running event loop."""

    def __init__(self, url: str, *, inference_timeout_s: float = 30.0, readiness_timeout_s: float = 60.0) -> None:
        self.url = url
        self.inference_timeout_s = inference_timeout_s
        self.readiness_timeout_s = readiness_timeout_s
        self._client = grpc_aio.InferenceServerClient(url, channel_args=_channel_args())
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    async def close(self) -> None:
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
        inputs: Mapping[str, npt.NDArray[Any]],
        outputs: Sequence[str],
        *,
        version: str = "",
        timeout_s: float | None = None,
        validate: bool = True,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run one (batched) request. ``validate`` checks names, dtypes and shapes against the model's
        metadata first, so a malformed tensor fails with :class:`InvalidInput` before it is sent."""
        if validate:
            meta = await self.metadata(model, version)
            expected = {t.name: t for t in meta.inputs}
            if set(inputs) != set(expected):
                raise InvalidInput(f"{model}: inputs {sorted(inputs)} but the model expects {sorted(expected)}")
            for name, array in inputs.items():
                expected[name].check(array)
        request = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), triton_datatype(array))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        wanted = [InferRequestedOutput(name) for name in outputs]
        try:
            result = await self._client.infer(
                model,
                request,
                model_version=version,
                outputs=wanted,
                client_timeout=self.inference_timeout_s if timeout_s is None else timeout_s,
            )
        except InferenceServerException as exc:
            raise _translate(exc, model) from None
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise ServerError(f"{model}: response lacks output {name!r}")
            arrays[name] = array
        return arrays

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
