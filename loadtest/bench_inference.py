"""Inference throughput: in-process onnxruntime vs the batcher through a real local Triton.

Measures, in one run, on the reference model:

* in-process onnxruntime images/s at batch 1, 16 and 32 (one intra-op thread, the same setting as the
  Triton python backend's onnxruntime session, so both sides get one core for the model);
* the :class:`~worker.inference.batcher.Batcher` through Triton with 1, 8 and 32 concurrent callers,
  each sending one image at a time;
* ratio = batcher at 32 callers / in-process at batch 32 (what Triton, gRPC and batching cost);
* batching gain = batcher at 32 callers / batcher at 1 caller (sequential batch 1).

A full run repeats all of it in ``ROUNDS`` interleaved rounds against one Triton and reports medians:
each ratio is computed within its round, then the median round's is reported with the range of all
rounds (on a shared 2-core machine one 5-second sample of either side moves by several percent).

Run: ``.venv/bin/python -m loadtest.bench_inference [--quick] [--triton-url HOST:PORT]``. Without a URL
it starts its own tritonserver on free loopback ports. ``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from infra.local.errors import ChildFailed
from infra.local.processes import free_port
from infra.local.supervisor import Supervisor
from infra.local.triton import triton_process_spec
from loadtest import cpus
from loadtest.phantoms import make_phantom, to_ct_dataset
from radstream.settings import PROJECT_ROOT, Settings
from worker.inference.batcher import Batcher
from worker.inference.triton.client import TritonClient
from worker.models.preprocess import prepare
from worker.models.spec import ModelSpec, load_specs

MODEL_REPOSITORY = PROJECT_ROOT / "triton" / "models"
MODEL_NAME = "lesion_detector"


@contextmanager
def local_triton(model_repository: Path = MODEL_REPOSITORY) -> Iterator[str]:
    """Start tritonserver through the local launcher; stop it (by PID) on exit."""
    with tempfile.TemporaryDirectory(prefix="radstream-bench-") as state:
        settings = Settings(
            triton_grpc_url=f"127.0.0.1:{free_port()}",
            triton_http_port=free_port(),
            triton_metrics_port=free_port(),
            model_repository=model_repository,
            state_dir=Path(state),
        )
        log = Path(state) / "tritonserver.log"
        supervisor = Supervisor()
        try:
            supervisor.start(dataclasses.replace(triton_process_spec(settings), log_path=log))
        except ChildFailed as exc:
            supervisor.stop()
            raise RuntimeError(f"tritonserver did not start ({exc}):\n{log.read_text()[-3000:]}") from exc
        try:
            yield settings.triton_grpc_url
        finally:
            supervisor.stop()


def make_inputs(spec: ModelSpec, count: int) -> npt.NDArray[np.float32]:
    """Realistic tensors: CT phantoms (half with a lesion) through the real preprocessing."""
    rng = np.random.default_rng(0)
    tensors = [prepare(to_ct_dataset(make_phantom(rng, i % 2 == 0).hu), spec).tensor for i in range(count)]
    stacked: npt.NDArray[np.float32] = np.stack(tensors).astype(np.float32)
    return stacked


def bench_in_process(spec: ModelSpec, images: npt.NDArray[np.float32], batch: int, seconds: float) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(spec.model_path(MODEL_REPOSITORY)), options, providers=["CPUExecutionProvider"])
    batches = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    session.run(None, {spec.input.name: batches[0]})  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for chunk in batches:
            session.run(None, {spec.input.name: chunk})
            done += len(chunk)
    return done / (time.perf_counter() - start)


async def bench_batcher(
    client: TritonClient, spec: ModelSpec, images: npt.NDArray[np.float32], callers: int, seconds: float
) -> dict[str, float]:
    async with Batcher(client, spec, max_wait_s=0.002, max_in_flight=2) as batcher:
        await batcher.infer(images[0])  # warm-up
        start_batches = batcher.stats.batches
        start_images = batcher.stats.images
        stop = time.perf_counter() + seconds
        latencies: list[float] = []

        async def caller(index: int) -> None:
            k = index
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await batcher.infer(images[k % len(images)])
                latencies.append(time.perf_counter() - t0)
                k += callers

        start = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed = time.perf_counter() - start
        sent = batcher.stats.images - start_images
        batches = batcher.stats.batches - start_batches
    return {
        "images_per_s": sent / elapsed,
        "mean_batch": sent / max(batches, 1),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p95_ms": float(np.percentile(latencies, 95) * 1e3),
    }


async def _bench_triton(url: str, spec: ModelSpec, images: npt.NDArray[np.float32], seconds: float) -> dict[str, Any]:
    async with TritonClient(url) as client:
        await client.wait_until_ready(spec.name, spec.version)
        return {str(c): await bench_batcher(client, spec, images, c, seconds) for c in (1, 8, 32)}


ROUNDS = 3


def _round(spec: ModelSpec, images: npt.NDArray[np.float32], url: str, seconds: float) -> dict[str, Any]:
    in_process = {str(b): bench_in_process(spec, images, b, seconds) for b in (1, 16, 32)}
    batcher = asyncio.run(_bench_triton(url, spec, images, seconds))
    return {
        "in_process_images_per_s": in_process,
        "batcher": batcher,
        "ratio_batcher32_vs_in_process_b32": batcher["32"]["images_per_s"] / in_process["32"],
        "ratio_batcher32_vs_in_process_b16": batcher["32"]["images_per_s"] / in_process["16"],
        "batching_gain_32_vs_1": batcher["32"]["images_per_s"] / batcher["1"]["images_per_s"],
    }


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def run(quick: bool = False, triton_url: str | None = None) -> dict[str, Any]:
    """Measure everything (``ROUNDS`` times, once with ``quick``); returns the median figures, every round's
    figures and the range of the ratios (also printed as a markdown table by ``main``)."""
    spec = next(s for s in load_specs(MODEL_REPOSITORY) if s.name == MODEL_NAME)
    seconds = 1.5 if quick else 4.0
    rounds_wanted = 1 if quick else ROUNDS
    images = make_inputs(spec, 64)
    if triton_url is None:
        with local_triton() as url:
            rounds = [_round(spec, images, url, seconds) for _ in range(rounds_wanted)]
    else:
        rounds = [_round(spec, images, triton_url, seconds) for _ in range(rounds_wanted)]
    ratios = [r["ratio_batcher32_vs_in_process_b32"] for r in rounds]
    gains = [r["batching_gain_32_vs_1"] for r in rounds]
    return {
        "model": f"{spec.name}:{spec.version}",
        "seconds_per_measurement": seconds,
        "rounds": len(rounds),
        "cpus": cpus.available(),
        "machine": platform.processor() or platform.machine(),
        "in_process_images_per_s": {
            b: _median([r["in_process_images_per_s"][b] for r in rounds]) for b in rounds[0]["in_process_images_per_s"]
        },
        "batcher": {
            c: {k: _median([r["batcher"][c][k] for r in rounds]) for k in rounds[0]["batcher"][c]}
            for c in rounds[0]["batcher"]
        },
        "ratio_batcher32_vs_in_process_b32": _median(ratios),
        "ratio_batcher32_vs_in_process_b32_range": [min(ratios), max(ratios)],
        "ratio_batcher32_vs_in_process_b16": _median([r["ratio_batcher32_vs_in_process_b16"] for r in rounds]),
        "batching_gain_32_vs_1": _median(gains),
        "batching_gain_32_vs_1_range": [min(gains), max(gains)],
        "per_round": rounds,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| path | concurrency / batch | images/s | mean batch | p50 ms | p95 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for batch, value in result["in_process_images_per_s"].items():
        rows.append(f"| in-process onnxruntime (1 thread) | batch {batch} | {value:.0f} | {batch} | | |")
    for callers, value in result["batcher"].items():
        rows.append(
            f"| batcher -> Triton (python backend, 1 thread) | {callers} callers | {value['images_per_s']:.0f} "
            f"| {value['mean_batch']:.1f} | {value['p50_ms']:.1f} | {value['p95_ms']:.1f} |"
        )
    low, high = result["ratio_batcher32_vs_in_process_b32_range"]
    gain_low, gain_high = result["batching_gain_32_vs_1_range"]
    rows += [
        "",
        f"- ratio batcher@32 / in-process batch 32: **{result['ratio_batcher32_vs_in_process_b32']:.2f}** "
        f"(rounds: {low:.2f} to {high:.2f}; vs batch 16: {result['ratio_batcher32_vs_in_process_b16']:.2f})",
        f"- batching gain, 32 concurrent vs sequential batch 1: **{result['batching_gain_32_vs_1']:.1f}x** "
        f"(rounds: {gain_low:.1f} to {gain_high:.1f})",
        f"- {result['cpus']} CPUs, {result['seconds_per_measurement']} s per measurement, medians of "
        f"{result['rounds']} interleaved round(s), each ratio taken within its round",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter measurements")
    parser.add_argument("--triton-url", default=None, help="use a running Triton instead of starting one")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    result = run(args.quick, args.triton_url)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
