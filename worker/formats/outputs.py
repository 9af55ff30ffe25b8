"""Raw model outputs of one execution, as a compressed .npz (no pickles): written by the worker.

Each output travels with its source instance's header (pixel data removed, as PrepareTensors wrote it),
which StoreResults needs for the SR and SEG.
"""

from __future__ import annotations

import io
import json

import numpy as np

from worker.formats.npz import MALFORMED, read_arrays
from worker.formats.types import InstanceOutput


def encode(outputs: list[InstanceOutput], headers: list[bytes]) -> bytes:
    if len(outputs) != len(headers):
        raise ValueError(f"{len(outputs)} outputs but {len(headers)} headers")
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
        # headers end to end, with offsets: fixed-width byte strings would drop trailing NUL padding
        header_bytes=np.frombuffer(b"".join(headers), dtype=np.uint8),
        header_offsets=np.cumsum([0, *(len(h) for h in headers)], dtype=np.int64),
    )
    return buf.getvalue()


def decode(data: bytes) -> list[tuple[InstanceOutput, bytes]]:
    """(output, source header bytes) per instance; ValueError if ``data`` is not an outputs object."""
    try:
        arrays = read_arrays(data)
        if "header_offsets" not in arrays:
            raise ValueError("it has no source headers: written by an earlier release; send the study again")
        raw, offsets = arrays["header_bytes"].tobytes(), arrays["header_offsets"]
        sop, model, probability, label = arrays["sop"], arrays["model"], arrays["probability"], arrays["label"]
        heatmap, peak, timings = arrays["heatmap"], arrays["peak"], arrays["timings"]
        return [
            (
                InstanceOutput(
                    sop_instance_uid=str(sop[i]),
                    model_name=str(model[i][0]),
                    model_version=str(model[i][1]),
                    probability=float(probability[i]),
                    label=str(label[i]),
                    heatmap=heatmap[i].astype(np.float32),
                    peak_row=float(peak[i][0]),
                    peak_col=float(peak[i][1]),
                    timings_ms={k: float(v) for k, v in json.loads(str(timings[i])).items()},
                ),
                raw[int(offsets[i]) : int(offsets[i + 1])],
            )
            for i in range(len(sop))
        ]
    except MALFORMED as exc:
        raise ValueError(f"not an outputs object: {type(exc).__name__}: {exc}") from exc
