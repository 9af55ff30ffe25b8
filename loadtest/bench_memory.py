"""Peak memory of the gateway while it streams one large STOW-RS request to S3 (a benchmark, not a test).

Starts the AWS emulator and a gateway on free loopback ports (as ``tests/conftest.py`` does), sends one
multipart request of ``instances`` CT slices of 10 MB each (100 = about 1 GB), generated while it is sent,
and reads the gateway's ``VmHWM`` (peak resident set) from ``/proc/<pid>/status`` before and after. The
reference is the request itself: a gateway that buffered it would peak above its size.

    .venv/bin/python -m loadtest.bench_memory [--instances N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.uid import generate_uid

from infra.local.emulator.process import emulator_process_spec
from infra.local.provision import provision
from infra.local.stack import child_env, gateway_process_spec, isolated_settings
from infra.local.supervisor import Supervisor
from loadtest import synthetic

FULL_INSTANCES = 100  # about 1 GB
QUICK_INSTANCES = 20  # about 200 MB
SIDE = 2240  # 2240 x 2240 x 16 bit = 10 MB of pixels per instance
CHUNK_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 600.0
TARGET_PEAK_MB = 300  # what tests/gateway/test_limits.py holds the 1 GB request to
BOUNDARY = "RadStreamBenchMemory0123456789"
TENANT = "bench"
MB = 1024 * 1024  # every "_mb" figure is in MiB, like the kB (KiB) /proc reports


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a process, in kB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _body(count: int) -> tuple[Iterator[bytes], list[int]]:
    """The request body as a generator of 1 MB chunks, and a list that collects each instance's size."""
    uids = synthetic.StudyUids.new()
    template = synthetic.ct_slice(uids, 0, rows=SIDE, cols=SIDE)
    template.PixelData = np.random.default_rng(1).integers(0, 3000, (SIDE, SIDE), dtype=np.int16).tobytes()
    sizes: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(count):
            template.SOPInstanceUID = generate_uid()
            template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
            data = synthetic.to_bytes(template)
            sizes.append(len(data))
            part = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for i in range(0, len(part), CHUNK_BYTES):
                yield part[i : i + CHUNK_BYTES]
        yield f"--{BOUNDARY}--\r\n".encode()

    return chunks(), sizes


def run(instances: int = FULL_INSTANCES) -> dict[str, Any]:
    """Send one request of ``instances`` x 10 MB; the gateway's peak RSS before and after, in MB."""
    key = secrets.token_urlsafe(32)
    supervisor = Supervisor()
    with tempfile.TemporaryDirectory(prefix="radstream-bench-memory-") as tmp:
        state = Path(tmp)
        settings = isolated_settings(state, f"{TENANT}:{key}")
        try:
            logs = state / "logs"
            supervisor.start(dataclasses.replace(emulator_process_spec(settings), log_path=logs / "aws.log"))
            asyncio.run(provision(settings, with_pipeline=False))
            spec = gateway_process_spec(settings, child_env(settings, f"{TENANT}:{key}"))
            gateway = supervisor.start(dataclasses.replace(spec, log_path=logs / "gateway.log"))
            before_kb = vm_hwm_kb(gateway.pid)
            body, sizes = _body(instances)
            started = time.perf_counter()
            response = httpx.post(
                f"{settings.base_url}/dicomweb/studies",
                content=body,
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                },
                timeout=REQUEST_TIMEOUT_S,
            )
            seconds = time.perf_counter() - started
            peak_kb = vm_hwm_kb(gateway.pid)
        finally:
            supervisor.stop()
    if response.status_code != 200:
        raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:300]}")
    stored = len(response.json().get("00081199", {}).get("Value", []) or [])
    request_mb = sum(sizes) / MB
    return {
        "instances": instances,
        "stored": stored,
        "instance_mb": sizes[0] / MB if sizes else 0.0,
        "request_mb": request_mb,
        "seconds": seconds,  # includes generating the body, which happens while it is sent
        "mb_per_s": request_mb / seconds,
        "gateway_vm_hwm_before_mb": before_kb / 1024,
        "gateway_vm_hwm_peak_mb": peak_kb / 1024,
        "growth_mb": (peak_kb - before_kb) / 1024,
        "peak_vs_request": peak_kb / 1024 / request_mb if request_mb else None,
        "growth_vs_request": (peak_kb - before_kb) / 1024 / request_mb if request_mb else None,
        "target_peak_mb": TARGET_PEAK_MB,
    }


def markdown(result: dict[str, Any]) -> str:
    ratio, growth = result["peak_vs_request"], result["growth_vs_request"]
    return "\n".join(
        [
            "| request | instances stored | gateway VmHWM before | gateway VmHWM peak | growth "
            "| growth / request | peak / request | MiB/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {result['request_mb']:.0f} MiB ({result['instances']} x {result['instance_mb']:.1f} MiB) "
            f"| {result['stored']}/{result['instances']} | {result['gateway_vm_hwm_before_mb']:.0f} MiB "
            f"| {result['gateway_vm_hwm_peak_mb']:.0f} MiB | {result['growth_mb']:.0f} MiB "
            f"| {'' if growth is None else f'{growth:.3f}'} | {'' if ratio is None else f'{ratio:.2f}'} "
            f"| {result['mb_per_s']:.1f} |",
            "",
            f"- target: peak under {result['target_peak_mb']} MiB for a 1 GB request, whatever the request size",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=FULL_INSTANCES, help="10 MB instances in the request")
    args = parser.parse_args()
    result = run(args.instances)
    print(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
