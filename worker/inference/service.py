"""Dataset in, :class:`InstanceOutput` out: preprocessing, the per-model batcher and postprocessing.

One :class:`InferenceService` per worker process: it owns one :class:`Batcher` per model spec and picks
the model for each image by modality and SOP class.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydicom.dataset import Dataset

from worker.formats.types import InstanceOutput
from worker.inference.batcher import Batcher, RetryPolicy
from worker.inference.errors import NoModelForImage
from worker.inference.postprocess import to_instance_output
from worker.inference.triton.client import TritonClient
from worker.models.preprocess import prepare_async
from worker.models.spec import ModelSpec, match_model


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
        output = to_instance_output(prepared.sop_instance_uid, prepared.source_shape, spec, result, prepared.timings_ms)
        output.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1e3
        return output
