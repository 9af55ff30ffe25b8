"""From a pydicom Dataset to a model's input tensor, as the model's spec prescribes.

All pixel work is CPU-bound: call :func:`prepare_async` from the event loop (it runs :func:`prepare` in a
worker thread). Pixel data are decoded by pydicom with whichever plugin handles the transfer syntax
(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle; deflate and big endian natively).

Steps (see :class:`worker.models.spec.Preprocessing`):

1. decode one frame: the middle frame of a multi-frame image (index ``NumberOfFrames // 2``);
   colour (RGB, YBR, palette) becomes luminance (ITU-R BT.601 weights);
2. modality LUT / rescale slope and intercept;
3. window to 0..1 (spec window for the modality, else the dataset's first VOI window, else percentiles);
4. MONOCHROME1 inversion (``1 - x`` after windowing, so that higher is always brighter);
5. area-weighted resize (bilinear when enlarging) to the input tensor's height and width;
6. ``(x - mean) / std`` as float32 of shape ``(1, height, width)``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from radstream.errors import describe
from worker.models.errors import PreprocessError
from worker.models.spec import ModelSpec, Preprocessing

LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class PreparedImage:
    sop_instance_uid: str
    modality: str
    sop_class_uid: str
    tensor: npt.NDArray[Any]  # float32 (1, height, width), what the model takes per image
    source_shape: tuple[int, int]  # rows, columns of the decoded frame
    frame_index: int
    timings_ms: dict[str, float]


def read_dataset(path: Path) -> Dataset:
    """Read a DICOM file (pixel data included); raise :class:`PreprocessError` if it is not DICOM."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise PreprocessError(f"{path.name}: not a readable DICOM file ({type(exc).__name__})") from exc


def analysed_frame(ds: Dataset) -> tuple[int, int]:
    """(number of frames, 0-based index of the frame the model sees: the middle one)."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return frames, frames // 2


def analysed_frame_number(ds: Dataset) -> int | None:
    """The 1-based number of the frame the model sees in a multi-frame image; None for a single frame."""
    frames, index = analysed_frame(ds)
    return index + 1 if frames > 1 else None


def decode_frame(ds: Dataset, apply_rescale: bool = True) -> tuple[npt.NDArray[Any], int]:
    """Decode the middle frame as a 2D float64 array, after the modality LUT when ``apply_rescale``.

    Colour images are converted to luminance; the modality LUT does not apply to them.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PreprocessError("dataset has no pixel data")
    frames, index = analysed_frame(ds)
    try:
        arr = pixel_array(ds, index=index) if frames > 1 else ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            photometric = "RGB"
        if arr.ndim == 3 and arr.shape[-1] == 3:
            out = arr.astype(np.float64) @ LUMINANCE
        elif arr.ndim == 2:
            out = (apply_modality_lut(arr, ds) if apply_rescale else arr).astype(np.float64, copy=False)
        else:
            raise PreprocessError(f"unsupported pixel array shape {arr.shape}")
    except PreprocessError:
        raise
    except Exception as exc:  # decoders raise many unrelated types (RuntimeError, ValueError, NotImplementedError)
        # The class and place only, and the transfer syntax's name only if it is a known one: messages and
        # values of a data set may quote patient data (docs/decisions.md).
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if isinstance(syntax, UID) and syntax.is_transfer_syntax else "an unknown transfer syntax"
        raise PreprocessError(f"cannot decode pixel data ({name}): {describe(exc)}") from exc
    return out, index


def _first(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, list | tuple | MultiValue) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None


def window_bounds(pixels: npt.NDArray[Any], ds: Dataset, options: Preprocessing) -> tuple[float, float]:
    """(low, high) mapped to 0 and 1."""
    window = options.window_by_modality.get(str(ds.get("Modality", "")))
    if window is not None:
        return window.center - window.width / 2.0, window.center + window.width / 2.0
    if options.use_dataset_window and ds.get("PhotometricInterpretation", "").startswith("MONOCHROME"):
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            return center - width / 2.0, center + width / 2.0
    low, high = np.percentile(pixels, options.percentile_range)
    if high <= low:
        low, high = float(pixels.min()), float(pixels.min()) + 1.0
    return float(low), float(high)


@lru_cache(maxsize=64)
def resample_matrix(n_in: int, n_out: int) -> npt.NDArray[Any]:
    """(n_out, n_in) weights: area averaging when shrinking, bilinear (half-pixel centres) when enlarging."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if n_out <= n_in:
        edges = np.arange(n_out + 1) * scale
        for i in range(n_out):
            lo, hi = edges[i], edges[i + 1]
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                weights[i, j] = min(hi, j + 1) - max(lo, j)
    else:
        centres = (np.arange(n_out) + 0.5) * scale - 0.5
        for i, c in enumerate(np.clip(centres, 0, n_in - 1)):
            j = min(int(np.floor(c)), n_in - 2) if n_in > 1 else 0
            frac = c - j
            weights[i, j] += 1.0 - frac
            if n_in > 1:
                weights[i, j + 1] += frac
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


def resize(image: npt.NDArray[Any], height: int, width: int) -> npt.NDArray[np.float64]:
    rows, cols = image.shape
    if rows % height == 0 and cols % width == 0 and rows >= height and cols >= width:
        # Whole-number shrink factors (512 -> 128): the area average is the mean of each block, the same
        # weights resample_matrix gives, at a fraction of the two matrix products' cost.
        fy, fx = rows // height, cols // width
        summed = image.reshape(height, fy, cols).sum(axis=1, dtype=np.float64)
        mean: npt.NDArray[np.float64] = summed.reshape(height, width, fx).sum(axis=2) / (fy * fx)
        return mean
    out: npt.NDArray[np.float64] = resample_matrix(rows, height) @ image @ resample_matrix(cols, width).T
    return out


def to_tensor(pixels: npt.NDArray[Any], ds: Dataset, spec: ModelSpec) -> npt.NDArray[Any]:
    """Window, invert, resize and normalise decoded pixels into the model's (1, H, W) float32 input."""
    options = spec.preprocessing
    low, high = window_bounds(pixels, ds, options)
    image = pixels - low  # one new array, then in place: the same values, a third of the allocations
    np.divide(image, high - low, out=image)
    np.clip(image, 0.0, 1.0, out=image)
    if options.invert_monochrome1 and ds.get("PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(1.0, image, out=image)
    height, width = spec.image_size
    image = resize(image, height, width)
    image = (image - options.mean) / options.std
    return image.astype(np.float32)[None]


def prepare(ds: Dataset, spec: ModelSpec) -> PreparedImage:
    """Decode and preprocess ``ds`` for ``spec`` (blocking; CPU-bound)."""
    t0 = time.perf_counter()
    pixels, index = decode_frame(ds, spec.preprocessing.apply_rescale)
    t1 = time.perf_counter()
    if pixels.size == 0 or not np.isfinite(pixels).all():
        raise PreprocessError("decoded pixel data are empty or not finite")
    tensor = to_tensor(pixels, ds, spec)
    t2 = time.perf_counter()
    return PreparedImage(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        tensor=tensor,
        source_shape=(int(pixels.shape[0]), int(pixels.shape[1])),
        frame_index=index,
        timings_ms={"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3},
    )


async def prepare_async(ds: Dataset, spec: ModelSpec) -> PreparedImage:
    """:func:`prepare` in a worker thread, off the event loop."""
    return await asyncio.to_thread(prepare, ds, spec)
