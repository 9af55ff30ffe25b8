"""The reference model on a CUDA GPU: what one batch costs by batch size, and whether the outputs agree.

The production Triton config (``triton/models/*/config.pbtxt``) serves ``model.onnx`` with the
onnxruntime backend on ``KIND_GPU`` with dynamic batching; the local stack can only run it on the CPU.
This benchmark runs the same ONNX file on a GPU, in one process, so the batching settings rest on a
measurement:

* **onnxruntime's CUDA execution provider**, the one Triton's onnxruntime backend uses, when the
  installed onnxruntime has it;
* **PyTorch on CUDA** through ``onnx2torch`` (the ONNX graph converted op for op), which needs only
  ``torch`` and ``onnx2torch``.

For each batch size the input is the preprocessed phantoms that the CPU benchmarks use; a timed batch
includes copying the input to the GPU and the outputs back, as Triton does per batch. Every output is
compared with onnxruntime on the CPU (strict FP32 on the GPU: TF32 off). This is the network alone:
no gRPC, no queueing, no Triton; the serving figures are in :mod:`loadtest.bench_inference`.

Run on a machine with an NVIDIA GPU (not part of ``make test``; torch is not a dependency)::

    python -m loadtest.bench_gpu [--model lesion_detector] [--seconds 1.0] [--out gpu.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from loadtest.phantoms import make_phantom, to_ct_dataset
from radstream.settings import PROJECT_ROOT
from worker.models.preprocess import prepare
from worker.models.spec import ModelSpec, load_specs

MODEL_REPOSITORY = PROJECT_ROOT / "triton" / "models"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DISTINCT_IMAGES = 64  # phantoms generated; larger batches repeat them


def images(spec: ModelSpec, count: int, seed: int = 7) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    tensors = [prepare(to_ct_dataset(make_phantom(rng, i % 2 == 0).hu), spec).tensor for i in range(count)]
    stacked: npt.NDArray[np.float32] = np.stack(tensors).astype(np.float32)
    return stacked


def batch_of(pool: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    reps = -(-size // len(pool))
    return np.ascontiguousarray(np.concatenate([pool] * reps)[:size])


def _timed(step: Any, seconds: float) -> tuple[float, int]:
    """(mean seconds per call, calls) of ``step`` over about ``seconds``, after warm-up calls."""
    for _ in range(3):
        step()
    calls, start = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 5:
            return elapsed / calls, calls


def _row(size: int, per_batch_s: float, calls: int, base_per_image_s: float | None) -> dict[str, Any]:
    per_image = per_batch_s / size
    return {
        "batch": size,
        "ms_per_batch": per_batch_s * 1e3,
        "images_per_s": size / per_batch_s,
        "calls": calls,
        "gain_vs_batch_1": None if base_per_image_s is None else base_per_image_s / per_image,
    }


def _max_diff(a: dict[str, npt.NDArray[Any]], b: dict[str, npt.NDArray[Any]]) -> dict[str, float]:
    return {name: float(np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)))) for name in a}


def bench_ort_cuda(spec: ModelSpec, model: Path, pool: npt.NDArray[np.float32], seconds: float) -> dict[str, Any]:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDA provider ({ort.get_available_providers()})"}
    session = ort.InferenceSession(str(model), providers=["CUDAExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows: list[dict[str, Any]] = []
    for size in BATCH_SIZES:
        batch = batch_of(pool, size)
        per_batch, calls = _timed(lambda b=batch: session.run(names, {spec.input.name: b}), seconds)
        rows.append(_row(size, per_batch, calls, rows[0]["ms_per_batch"] / 1e3 if rows else None))
    outputs = dict(zip(names, session.run(names, {spec.input.name: pool}), strict=True))
    return {"provider": "onnxruntime CUDAExecutionProvider", "rows": rows, "outputs": outputs}


def bench_torch_cuda(model: Path, pool: npt.NDArray[np.float32], seconds: float) -> dict[str, Any]:
    try:
        torch: Any = importlib.import_module("torch")
        onnx: Any = importlib.import_module("onnx")
        onnx2torch: Any = importlib.import_module("onnx2torch")
    except ImportError as exc:
        return {"skipped": f"needs torch, onnx and onnx2torch: {exc}"}
    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    graph = onnx.load(str(model))
    names = [o.name for o in graph.graph.output]
    net = onnx2torch.convert(graph).cuda().eval()

    def run(batch: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        with torch.inference_mode():
            out = net(torch.from_numpy(batch).cuda(non_blocking=False))
            out = out if isinstance(out, (list, tuple)) else [out]
            return {name: t.cpu().numpy() for name, t in zip(names, out, strict=True)}

    rows: list[dict[str, Any]] = []
    for size in BATCH_SIZES:
        batch = batch_of(pool, size)
        per_batch, calls = _timed(lambda b=batch: run(b), seconds)
        rows.append(_row(size, per_batch, calls, rows[0]["ms_per_batch"] / 1e3 if rows else None))
    return {
        "provider": f"PyTorch {torch.__version__} CUDA via onnx2torch (FP32, TF32 off)",
        "device": torch.cuda.get_device_name(0),
        "rows": rows,
        "outputs": run(pool),
    }


def bench_ort_cpu(spec: ModelSpec, model: Path, pool: npt.NDArray[np.float32], seconds: float) -> dict[str, Any]:
    """The local stack's path (one intra-op thread), at the production max batch size, and the reference outputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows: list[dict[str, Any]] = []
    for size in (1, spec.serving.max_batch_size):
        batch = batch_of(pool, size)
        per_batch, calls = _timed(lambda b=batch: session.run(names, {spec.input.name: b}), seconds)
        rows.append(_row(size, per_batch, calls, rows[0]["ms_per_batch"] / 1e3 if rows else None))
    outputs = dict(zip(names, session.run(names, {spec.input.name: pool}), strict=True))
    return {"provider": f"onnxruntime {ort.__version__} CPU, 1 intra-op thread", "rows": rows, "outputs": outputs}


def run(model_name: str, seconds: float) -> dict[str, Any]:
    spec = next(s for s in load_specs(MODEL_REPOSITORY) if s.name == model_name)
    model = MODEL_REPOSITORY / spec.name / spec.version / spec.model_file
    pool = images(spec, DISTINCT_IMAGES)
    reference = bench_ort_cpu(spec, model, pool, seconds)
    expected = reference.pop("outputs")
    result: dict[str, Any] = {"model": f"{spec.name}:{spec.version}", "serving": spec.serving.model_dump(mode="json")}
    gpu_sections: dict[str, Any] = {
        "ort_cuda": lambda: bench_ort_cuda(spec, model, pool, seconds),
        "torch_cuda": lambda: bench_torch_cuda(model, pool, seconds),
    }
    sections: list[tuple[str, dict[str, Any]]] = [("cpu", reference)]
    for key, measure in gpu_sections.items():
        try:
            sections.append((key, measure()))
        except Exception as exc:  # one path failing (a converter gap, a driver error) leaves the other
            sections.append((key, {"skipped": f"failed: {type(exc).__name__}: {exc}"}))
    for key, section in sections:
        outputs = section.pop("outputs", None)
        if outputs is not None:
            section["max_abs_diff_vs_cpu"] = _max_diff(expected, outputs)
        result[key] = section
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Model {result['model']}; serving settings {result['serving']}", ""]
    for key in ("cpu", "ort_cuda", "torch_cuda"):
        section = result[key]
        if "skipped" in section:
            lines += [f"- {key}: skipped ({section['skipped']})", ""]
            continue
        lines += [f"**{section['provider']}**" + (f" on {section['device']}" if "device" in section else "")]
        if "max_abs_diff_vs_cpu" in section:
            diffs = ", ".join(f"{k} {v:.2e}" for k, v in section["max_abs_diff_vs_cpu"].items())
            lines += [f"(largest difference from onnxruntime CPU over {DISTINCT_IMAGES} images: {diffs})"]
        lines += ["", "| batch | ms per batch | images/s | per-image gain vs batch 1 |", "|---:|---:|---:|---:|"]
        for row in section["rows"]:
            gain = "" if row["gain_vs_batch_1"] is None else f"{row['gain_vs_batch_1']:.1f}x"
            lines.append(f"| {row['batch']} | {row['ms_per_batch']:.3f} | {row['images_per_s']:.0f} | {gain} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lesion_detector")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per batch size")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    result = run(args.model, args.seconds)
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
