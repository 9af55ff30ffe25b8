"""Raw model outputs of one execution, as a compressed .npz (no pickles): written by the worker."""

from __future__ import annotations

import io
import json

import numpy as np

from worker.inference.types import InstanceOutput


def encode(outputs: list[InstanceOutput]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        sop=np.array([o.sop_instance_uid for o in outputs], dtype=np.str_),
        model=np.array([[o.model_name, o.model_version] for o in outputs], dtype=np.str_).reshape(-1, 2),
        probability=np.array([o.probability for o in outputs], dtype=np.float64),
        label=np.array([o.label for o in outputs], dtype=np.str_),
        heatmap=np.stack([o.heatmap.astype(np.float32) for o in outputs])
        if outputs
        else np.zeros((0, 1, 1), np.float32),
        peak=np.array([[o.peak_row, o.peak_col] for o in outputs], dtype=np.float64).reshape(-1, 2),
        timings=np.array([json.dumps(o.timings_ms) for o in outputs], dtype=np.str_),
    )
    return buf.getvalue()


def decode(data: bytes) -> list[InstanceOutput]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return [
            InstanceOutput(
                sop_instance_uid=str(z["sop"][i]),
                model_name=str(z["model"][i][0]),
                model_version=str(z["model"][i][1]),
                probability=float(z["probability"][i]),
                label=str(z["label"][i]),
                heatmap=z["heatmap"][i].astype(np.float32),
                peak_row=float(z["peak"][i][0]),
                peak_col=float(z["peak"][i][1]),
                timings_ms={k: float(v) for k, v in json.loads(str(z["timings"][i])).items()},
            )
            for i in range(len(z["sop"]))
        ]
