"""The whole benchmark in one go: every measurement next to its reference, in the same run, on this machine.

``run_bench(out, quick=...)`` runs five sections, each independent of the others (an exception in one is
recorded as ``{"error": ...}`` and the rest goes on):

* **inference**: in-process onnxruntime vs the batcher through a local Triton (:mod:`loadtest.bench_inference`);
* **stow**: raw S3 PutObject vs gateway STOW-RS vs Orthanc (:mod:`loadtest.bench_stow`);
* **dimse**: C-STORE into the listener (1 and 4 associations) vs Orthanc's C-STORE SCP, STOW-RS and raw
  PutObject (:mod:`loadtest.bench_dimse`);
* **pipeline**: end-to-end latency vs open-loop arrival rate, per-stage breakdown (:mod:`loadtest.bench_pipeline`);
* **memory**: the gateway's peak RSS on one large STOW request vs the request's size (:mod:`loadtest.bench_memory`).

It writes ``report.md``, ``results.json`` (rewritten after every section) and the PNGs of
:mod:`loadtest.plots` into ``out``. Entry point: ``radstream bench [--quick] [--out DIR]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.local.supervisor import Supervisor
from infra.local.triton import triton_process_spec
from loadtest import bench_memory, cpus, plots
from radstream.settings import Settings

SECTIONS = ("inference", "stow", "dimse", "pipeline", "memory")
TINY_MEMORY_INSTANCES = 5  # about 50 MB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the machine --------------------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, Any]:
    mem_kb = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cpus": cpus.available(),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024**2, 1) if mem_kb else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_before": os.getloadavg()[0],
    }


# --- the sections -------------------------------------------------------------------------------------


@contextmanager
def local_triton(state_dir: Path) -> Iterator[str]:
    """A tritonserver on free loopback ports, started by the same launcher as ``radstream up``."""
    settings = Settings(
        triton_grpc_url=f"127.0.0.1:{_free_port()}",
        triton_http_port=_free_port(),
        triton_metrics_port=_free_port(),
        state_dir=state_dir,
    )
    supervisor = Supervisor()
    try:
        spec = triton_process_spec(settings)
        supervisor.start(dataclasses.replace(spec, log_path=state_dir / "logs" / "triton.log"))
        yield settings.triton_grpc_url
    finally:
        supervisor.stop()


def inference_section(quick: bool, tiny: bool) -> dict[str, Any]:
    from loadtest import bench_inference

    with tempfile.TemporaryDirectory(prefix="radstream-bench-triton-") as tmp, local_triton(Path(tmp)) as url:
        return bench_inference.run(quick=quick or tiny, triton_url=url)


def stow_section(quick: bool, tiny: bool) -> dict[str, Any]:
    from loadtest import bench_stow

    return bench_stow.run(quick=quick or tiny)


def dimse_section(quick: bool, tiny: bool) -> dict[str, Any]:
    from loadtest import bench_dimse

    return bench_dimse.run(quick=quick or tiny)


def pipeline_section(quick: bool, tiny: bool) -> dict[str, Any]:
    from loadtest import bench_pipeline

    return bench_pipeline.run(quick=quick or tiny)


def memory_section(quick: bool, tiny: bool) -> dict[str, Any]:
    if tiny:
        return bench_memory.run(TINY_MEMORY_INSTANCES)
    return bench_memory.run(bench_memory.QUICK_INSTANCES if quick else bench_memory.FULL_INSTANCES)


RUNNERS: dict[str, Callable[[bool, bool], dict[str, Any]]] = {
    "inference": inference_section,
    "stow": stow_section,
    "dimse": dimse_section,
    "pipeline": pipeline_section,
    "memory": memory_section,
}


# --- results.json -------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")


# --- the run ------------------------------------------------------------------------------------------


def run_bench(
    out: Path,
    *,
    quick: bool,
    tiny: bool = False,
    sections: Collection[str] = SECTIONS,
    command: str | None = None,
) -> dict[str, Any]:
    """Run ``sections`` (the others are recorded as skipped); write report.md, results.json and PNGs to ``out``.

    ``tiny`` is the smallest configuration (for tests): quick mode in every module, a ~50 MB memory request.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    from loadtest.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    mode = "tiny" if tiny else "quick" if quick else "full"
    started = time.time()
    results: dict[str, Any] = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "command": command or f"run_bench({str(out)!r}, quick={quick}, tiny={tiny})",
        "mode": mode,
        "machine": machine(),
        "section_seconds": {},
    }
    for name in SECTIONS:
        if name not in sections:
            results[name] = {"skipped": "not selected for this run"}
            continue
        print(f"[bench] {name} ({mode}) ...", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = RUNNERS[name](quick, tiny)
        except Exception as exc:  # one failed section must not cost the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(f"[bench] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        results["section_seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name} done in {results['section_seconds'][name]:.0f} s", flush=True)
        _write_json(results, out / "results.json")
    try:
        results["plot_problems"] = plots.draw_all(results, out)
    except Exception as exc:  # e.g. no usable matplotlib: the numbers are still worth writing
        results["plot_problems"] = {"*": f"{type(exc).__name__}: {exc}"}
    results["duration_s"] = round(time.time() - started, 1)
    _write_json(results, out / "results.json")
    try:
        report = write_report(results)
    except Exception as exc:
        report = f"# RadStream benchmark\n\nThe report could not be rendered ({type(exc).__name__}: {exc}); "
        report += "every number is in results.json.\n"
    (out / "report.md").write_text(report)
    return results
