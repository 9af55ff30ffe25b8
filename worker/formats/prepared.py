"""One prepared instance as an uncompressed .npz (no pickles): the model-ready tensor and the instance's
header without pixel data. PrepareTensors writes it; the worker reads it and passes the header on in the
outputs object, so StoreResults reads one object per execution instead of one per instance."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

from worker.formats.npz import MALFORMED, read_arrays


def encode(tensor: npt.NDArray[np.float32], header: bytes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, tensor=tensor.astype(np.float32, copy=False), header=np.frombuffer(header, dtype=np.uint8))
    return buf.getvalue()


def decode(data: bytes) -> tuple[npt.NDArray[np.float32], bytes]:
    """(tensor, header bytes); ValueError if ``data`` is not a prepared instance."""
    try:
        arrays = read_arrays(data)
        return arrays["tensor"].astype(np.float32, copy=False), arrays["header"].tobytes()
    except MALFORMED as exc:
        raise ValueError(f"not a prepared instance: {type(exc).__name__}: {exc}") from exc
