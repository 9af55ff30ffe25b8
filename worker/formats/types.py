"""Typed inference results shared by the worker, the result writers and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy
import numpy.typing as npt


@dataclass(frozen=True)
class InstanceOutput:
    sop_instance_uid: str
    model_name: str
    model_version: str
    probability: float  # lesion probability 0..1
    label: str  # e.g. "lesion" / "no lesion" by the model's threshold
    heatmap: npt.NDArray[numpy.float32]  # float32 (h, w) in 0..1 at model output resolution (e.g. 32x32)
    peak_row: float  # heatmap peak in source-image pixel coordinates
    peak_col: float
    timings_ms: dict[str, float]
