"""Tensor descriptors, the Triton <-> numpy datatype maps, and the batch a request's input is made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.inference.triton.errors import InvalidInput
from worker.inference.triton.shared_memory import SHM_ALIGN


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
