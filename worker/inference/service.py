"""Dataset in, :class:`InstanceOutput` out: preprocessing, the per-model batcher and postprocessing.

One :class:`InferenceService` per worker process: it owns one :class:`Batcher` per model spec and picks
the model for each image by modality and SOP class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from worker.formats.types import InstanceOutput
from worker.inference.batcher import Batcher, ItemResult, RetryPolicy
from worker.inference.client import TritonClient
from worker.models.preprocess import PreparedImage, prepare_async
from worker.models.spec import ModelSpec, match_model


class NoModelForImage(LookupError):
    """No model spec accepts this image's modality and SOP class."""


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


def to_instance_output(prepared: PreparedImage, spec: ModelSpec, result: ItemResult) -> InstanceOutput:
    probability = float(np.clip(result.outputs[spec.outputs.probability.name].reshape(-1)[0], 0.0, 1.0))
    heatmap = np.clip(result.outputs[spec.outputs.heatmap.name].reshape(spec.heatmap_size), 0.0, 1.0)
    heatmap = heatmap.astype(np.float32, copy=False)
    peak_row, peak_col = heatmap_peak(heatmap, prepared.source_shape)
    labels = spec.outputs.labels
    return InstanceOutput(
        sop_instance_uid=prepared.sop_instance_uid,
        model_name=spec.name,
        model_version=spec.version,
        probability=probability,
        label=labels.positive if probability >= labels.threshold else labels.negative,
        heatmap=heatmap,
        peak_row=peak_row,
        peak_col=peak_col,
        timings_ms={**prepared.timings_ms, "queue": result.queue_ms, "infer": result.infer_ms},
    )


class InferenceService:
    """Route each dataset to its model's batcher. Use as ``async with InferenceService(...)``."""

    def __init__(
        self,
        client: TritonClient,
        specs: Sequence[ModelSpec],
        *,
        max_wait_s: float = 0.002,
        max_in_flight: int = 2,
        request_timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.specs = list(specs)
        self.batchers = {
            spec.name: Batcher(
                client,
                spec,
                max_wait_s=max_wait_s,
                max_in_flight=max_in_flight,
                request_timeout_s=request_timeout_s,
                retry=retry,
            )
            for spec in self.specs
        }

    async def __aenter__(self) -> InferenceService:
        for batcher in self.batchers.values():
            await batcher.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for batcher in self.batchers.values():
            await batcher.close()

    def model_for(self, ds: Dataset) -> ModelSpec:
        modality, sop_class = str(ds.get("Modality", "")), str(ds.get("SOPClassUID", ""))
        spec = match_model(self.specs, modality, sop_class)
        if spec is None:
            raise NoModelForImage(f"no model accepts modality {modality!r} and SOP class {sop_class!r}")
        return spec

    async def infer_dataset(self, ds: Dataset) -> InstanceOutput:
        """Preprocess (in a thread), batch, infer and postprocess one image."""
        spec = self.model_for(ds)
        prepared = await prepare_async(ds, spec)
        result = await self.batchers[spec.name].infer(prepared.tensor)
        t0 = time.perf_counter()
        output = to_instance_output(prepared, spec, result)
        output.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1e3
        return output
