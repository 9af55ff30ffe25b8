"""Postprocessing: a model's raw outputs for one image as the :class:`InstanceOutput` the results are built from."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from worker.formats.types import InstanceOutput
from worker.inference.batcher import ItemResult
from worker.models.spec import ModelSpec


def heatmap_peak(heatmap: npt.NDArray[Any], source_shape: tuple[int, int]) -> tuple[float, float]:
    """Peak of ``heatmap`` in source-image pixel coordinates (row, col), pixel centres at integers.

    The arg-max cell is refined by the weighted centroid of its 3x3 neighbourhood, then mapped through
    the resize (the heatmap covers the whole image uniformly).
    """
    h, w = heatmap.shape
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, h), max(c - 1, 0), min(c + 2, w)
    patch = heatmap[r0:r1, c0:c1].astype(np.float64)
    total = float(patch.sum())
    if total > 0:
        rows, cols = np.mgrid[r0:r1, c0:c1]
        rf, cf = float((patch * rows).sum() / total), float((patch * cols).sum() / total)
    else:
        rf, cf = float(r), float(c)
    rows_src, cols_src = source_shape
    return (rf + 0.5) * rows_src / h - 0.5, (cf + 0.5) * cols_src / w - 0.5


def to_instance_output(
    sop_instance_uid: str,
    source_shape: tuple[int, int],
    spec: ModelSpec,
    result: ItemResult,
    timings_ms: dict[str, float] | None = None,
) -> InstanceOutput:
    """The model's outputs for one image of ``source_shape`` (rows, cols) as an :class:`InstanceOutput`:
    probability and heatmap clipped to 0..1, the label by the spec's threshold, the peak in source pixels."""
    probability = float(np.clip(result.outputs[spec.outputs.probability.name].reshape(-1)[0], 0.0, 1.0))
    heatmap = np.clip(result.outputs[spec.outputs.heatmap.name].reshape(spec.heatmap_size), 0.0, 1.0)
    heatmap = heatmap.astype(np.float32, copy=False)
    peak_row, peak_col = heatmap_peak(heatmap, source_shape)
    labels = spec.outputs.labels
    return InstanceOutput(
        sop_instance_uid=sop_instance_uid,
        model_name=spec.name,
        model_version=spec.version,
        probability=probability,
        label=labels.positive if probability >= labels.threshold else labels.negative,
        heatmap=heatmap,
        peak_row=peak_row,
        peak_col=peak_col,
        timings_ms={**(timings_ms or {}), "queue": result.queue_ms, "infer": result.infer_ms},
    )
