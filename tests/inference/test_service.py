"""Datasets in, InstanceOutput out: preprocessing, batching, Triton and postprocessing together."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydicom.uid import generate_uid

from loadtest.phantoms import make_phantom, to_ct_dataset
from worker.formats.types import InstanceOutput
from worker.inference.errors import NoModelForImage
from worker.inference.postprocess import heatmap_peak
from worker.inference.service import InferenceService
from worker.inference.triton.client import TritonClient
from worker.models.spec import ModelSpec


def test_heatmap_peak_maps_to_source_pixels() -> None:
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[8, 20] = 1.0
    # Cell (8, 20) of a 32x32 map over a 512x256 image: centre at ((8.5 * 16) - 0.5, (20.5 * 8) - 0.5).
    assert heatmap_peak(heatmap, (512, 256)) == pytest.approx((135.5, 163.5))
    heatmap[8, 21] = 1.0  # two equal cells: the peak lies between them
    row, col = heatmap_peak(heatmap, (32, 32))
    assert (row, col) == pytest.approx((8.0, 20.5))


async def test_phantoms_are_detected_and_localised(client: TritonClient, specs: list[ModelSpec]) -> None:
    """The reference model separates phantoms with and without a lesion and points at the lesion.

    A weak model would fail this; the bounds are far below the held-out metrics in triton/README.md.
    """
    rng = np.random.default_rng(7)
    phantoms = [make_phantom(rng, with_lesion=i % 2 == 0, size=256) for i in range(24)]
    datasets = [to_ct_dataset(p.hu, generate_uid()) for p in phantoms]
    async with InferenceService(client, specs) as service:
        outputs = await asyncio.gather(*(service.infer_dataset(ds) for ds in datasets))

    for ds, output in zip(datasets, outputs, strict=True):
        assert isinstance(output, InstanceOutput)
        assert output.sop_instance_uid == ds.SOPInstanceUID
        assert output.model_name == "lesion_detector"
        assert output.model_version == "1"
        assert output.heatmap.shape == (32, 32)
        assert output.heatmap.dtype == np.float32
        assert output.heatmap.min() >= 0.0
        assert output.heatmap.max() <= 1.0
        assert output.label == ("lesion" if output.probability >= 0.5 else "no lesion")
        assert {"decode", "preprocess", "queue", "infer", "postprocess"} <= set(output.timings_ms)
    positives = [o.probability for p, o in zip(phantoms, outputs, strict=True) if p.lesion]
    negatives = [o.probability for p, o in zip(phantoms, outputs, strict=True) if not p.lesion]
    pairs = [(a > b) + 0.5 * (a == b) for a in positives for b in negatives]
    assert sum(pairs) / len(pairs) >= 0.8, (positives, negatives)
    distances = [
        np.hypot(o.peak_row - p.lesion[0], o.peak_col - p.lesion[1])
        for p, o in zip(phantoms, outputs, strict=True)
        if p.lesion and o.label == "lesion"
    ]
    assert distances, "no lesion was detected"
    assert np.median(distances) <= 16.0, distances  # 16 px of 256 = 2 heatmap cells


async def test_unsupported_modality(client: TritonClient, specs: list[ModelSpec]) -> None:
    ds = to_ct_dataset(make_phantom(np.random.default_rng(1), with_lesion=False).hu)
    ds.Modality = "US"
    async with InferenceService(client, specs) as service:
        with pytest.raises(NoModelForImage, match="'US'"):
            await service.infer_dataset(ds)
