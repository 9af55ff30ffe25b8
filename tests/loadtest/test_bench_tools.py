"""The GPU benchmark and the CPU pinning of the benchmarks work on this machine (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest import bench_gpu, cpus
from radstream.settings import PROJECT_ROOT


def test_bench_gpu_measures_the_cpu_reference_and_says_why_a_gpu_path_did_not_run() -> None:
    result = bench_gpu.run("lesion_detector", seconds=0.05)
    cpu = result["cpu"]
    assert [row["batch"] for row in cpu["rows"]] == [1, 32]
    assert all(row["images_per_s"] > 0 and row["calls"] >= 5 for row in cpu["rows"])
    assert result["serving"]["gpu_max_batch_size"] == 128
    for key in ("ort_cuda", "torch_cuda"):
        section = result[key]
        if "skipped" in section:  # no CUDA provider, no torch or no GPU here: each says which
            assert section["skipped"]
        else:  # a GPU machine: every batch size measured, outputs equal to the CPU's within FP32 error
            assert [row["batch"] for row in section["rows"]] == list(bench_gpu.BATCH_SIZES)
            assert max(section["max_abs_diff_vs_cpu"].values()) < 1e-3
    text = bench_gpu.markdown(result)
    assert "onnxruntime" in text and "| 32 |" in text


def test_batches_repeat_the_distinct_images_up_to_the_size_asked() -> None:
    pool = np.arange(3 * 2, dtype=np.float32).reshape(3, 1, 1, 2)
    batch = bench_gpu.batch_of(pool, 7)
    assert batch.shape == (7, 1, 1, 2)
    assert np.array_equal(batch[3:6], pool) and np.array_equal(batch[6], pool[0])


def test_pin_narrows_this_process_and_its_children_to_the_first_cpus() -> None:
    code = (
        "import os, subprocess, sys\n"
        "from loadtest import cpus\n"
        "chosen = cpus.pin(1)\n"
        "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
        " capture_output=True, text=True, check=True)\n"
        "print(chosen, cpus.available(), child.stdout.strip())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    first = min(os.sched_getaffinity(0))
    assert done.stdout.split("\n")[0] == f"[{first}] 1 [{first}]"


@pytest.mark.parametrize("count", [0, len(os.sched_getaffinity(0)) + 1])
def test_pin_refuses_counts_this_process_cannot_have(count: int) -> None:
    with pytest.raises(ValueError, match=f"--cpus {count}: this process may use"):
        cpus.pin(count)


def test_radstream_bench_refuses_more_cpus_than_it_may_use_before_measuring(tmp_path: Path) -> None:
    too_many = len(os.sched_getaffinity(0)) + 1
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "--cpus", str(too_many), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"--cpus {too_many}: this process may use" in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
