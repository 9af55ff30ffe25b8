"""STOW-RS ingest throughput: raw S3 PutObject vs the RadStream gateway vs Orthanc, in one run.

One synthetic CT study (200 slices, 512x512, 16-bit; 40 with ``--quick``) is generated before any clock
starts and stored three ways, each by 4 concurrent clients:

* **raw PutObject**: aioboto3 ``put_object`` of each instance's bytes to the moto emulator, with the
  arguments the gateway uses (SSE AES256, ``If-None-Match: *``, SHA-256 metadata): the floor under the
  gateway, which does that plus multipart parsing, hashing, header parsing and the manifest;
* **RadStream STOW-RS**: ``POST /dicomweb/studies/{study}`` to a gateway process started like the tests
  start it (moto server, provisioning, uvicorn on free loopback ports), 10 instances per request;
* **Orthanc** (Debian ``orthanc`` + ``orthanc-dicomweb``), the same bodies to ``/dicom-web/studies/{study}``.
  Orthanc 1.10 cannot bind to loopback only, so it runs in a network namespace with nothing but ``lo``,
  and its client runs in the same namespace: this module re-invokes itself with ``--orthanc-client``.

Every measurement is repeated (5 times, once with ``--quick``), each time with fresh UIDs; the median
run is reported. CPU seconds of each server process are read from ``/proc`` around the timed section.

Run (as root, for ``ip netns``)::

    .venv/bin/python -m loadtest.bench_stow [--quick] [--out stow.json] [--profile-gateway gateway.prof]

``run(quick)`` returns the figures as a dict. ``--profile-gateway`` runs the gateway under cProfile
(this slows it down; the throughput of such a run is not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from infra.local.emulator.process import emulator_process_spec
from infra.local.provision import provision
from infra.local.stack import child_env, gateway_process_spec, isolated_settings
from infra.local.supervisor import Supervisor
from loadtest import cpus
from loadtest.measure import Measurement, drain, median_run
from loadtest.orthanc import OrthancUnavailable, orthanc_process, run_client_in_namespace
from loadtest.synthetic import StudyUids, ct_slice, to_bytes
from radstream.aws import config as aws
from radstream.settings import Settings

STUDY_INSTANCES = 200
QUICK_INSTANCES = 40
BATCH_INSTANCES = 10
CONCURRENCY = 4
REPEATS = 5
ROWS = COLS = 512
REQUEST_TIMEOUT_S = 300.0
ORTHANC_READY_TIMEOUT_S = 60.0
ORTHANC_CLIENT_TIMEOUT_S = 600.0
BENCH_TENANT = "bench"


# --- the study, generated before timing ---------------------------------------------------------------


class StudyMaker:
    """Pixel data is made once; :meth:`fresh` returns the same slices under new study/series/SOP UIDs."""

    def __init__(self, count: int) -> None:
        uids = StudyUids.new()
        frame = generate_uid()
        self._slices: list[Dataset] = [
            ct_slice(uids, i, rows=ROWS, cols=COLS, frame_of_reference=frame) for i in range(count)
        ]

    def fresh(self) -> tuple[str, list[bytes]]:
        uids = StudyUids.new()
        out: list[bytes] = []
        for ds in self._slices:
            ds.StudyInstanceUID = uids.study
            ds.SeriesInstanceUID = uids.series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            out.append(to_bytes(ds))
        return uids.study, out


@dataclasses.dataclass(frozen=True)
class Body:
    study: str
    content: bytes
    instances: int
    dicom_bytes: int
    boundary: str


def multipart_bodies(study: str, parts: list[bytes], batch: int = BATCH_INSTANCES) -> list[Body]:
    bodies: list[Body] = []
    for i in range(0, len(parts), batch):
        chunk = parts[i : i + batch]
        boundary = uuid.uuid4().hex
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        pieces = [piece for part in chunk for piece in (head, part, b"\r\n")]
        content = b"".join(pieces) + f"--{boundary}--\r\n".encode()
        bodies.append(Body(study, content, len(chunk), sum(map(len, chunk)), boundary))
    return bodies


# --- measurements -------------------------------------------------------------------------------------


def stored_count(response: httpx.Response) -> int:
    """Instances in the ReferencedSOPSequence of a Store Instances Response; 0 when it is not DICOM JSON."""
    if not response.headers.get("content-type", "").startswith(("application/dicom+json", "application/json")):
        return 0
    return len(response.json().get("00081199", {}).get("Value", []) or [])


async def stow(base_url: str, headers: dict[str, str], bodies: list[Body], servers: dict[str, int]) -> Measurement:
    """POST every body to ``{base_url}/studies/{study}``, ``CONCURRENCY`` requests at a time."""
    failed = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0), limits=limits) as http:

        async def post(body: Body) -> None:
            nonlocal failed
            response = await http.post(
                f"{base_url}/studies/{body.study}",
                content=body.content,
                headers={
                    **headers,
                    "Accept": "application/dicom+json",
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={body.boundary}',
                },
            )
            stored = stored_count(response)
            if response.status_code != 200 or stored != body.instances:
                failed += body.instances - stored
                print(f"  STOW {response.status_code}: {stored}/{body.instances} stored {response.text[:200]}")

        clock = await drain(bodies, post, servers, CONCURRENCY)
    instances, dicom_bytes = sum(b.instances for b in bodies), sum(b.dicom_bytes for b in bodies)
    return Measurement.of(clock, instances, dicom_bytes, len(bodies), failed)


async def raw_puts(settings: Settings, parts: list[bytes], servers: dict[str, int]) -> Measurement:
    """aioboto3 PutObject of ``parts`` with the gateway's arguments, ``CONCURRENCY`` at a time."""
    prefix = f"bench-raw/{uuid.uuid4().hex}"
    objects = [(f"{prefix}/{i}.dcm", data, hashlib.sha256(data).hexdigest()) for i, data in enumerate(parts)]
    session = aws.session(settings)
    async with session.client("s3", **aws.client_kwargs(settings)) as s3:

        async def put(obj: tuple[str, bytes, str]) -> None:
            key, data, sha256 = obj
            await s3.put_object(
                Bucket=settings.images_bucket,
                Key=key,
                Body=data,
                ContentLength=len(data),
                ContentType="application/dicom",
                Metadata={"sha256": sha256},
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                IfNoneMatch="*",
                ServerSideEncryption="AES256",
            )

        await put((f"{prefix}/warm-up.dcm", parts[0], objects[0][2]))
        clock = await drain(objects, put, servers, CONCURRENCY)
    return Measurement.of(clock, len(parts), sum(map(len, parts)), len(parts), 0)


# --- RadStream: moto + gateway, started like tests/conftest.py ----------------------------------------


# uvicorn re-raises SIGTERM after its graceful shutdown, which would kill `python -m cProfile` before it
# writes anything; this runner turns SIGTERM into SystemExit and dumps the profile on the way out.
_PROFILE_RUNNER = """
import cProfile, signal, sys, time
def _exit(signum, frame):
    raise SystemExit(0)
signal.signal(signal.SIGTERM, _exit)
out, sys.argv = sys.argv[1], ["uvicorn", *sys.argv[2:]]
import uvicorn.main
profile = cProfile.Profile(time.thread_time)  # CPU of the event-loop thread, not wall time
profile.enable()
try:
    uvicorn.main.main()
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def profiled_argv(argv: list[str], profile_path: Path) -> list[str]:
    """``python -m uvicorn ARGS`` -> the same server under cProfile (main thread only)."""
    if argv[1:3] != ["-m", "uvicorn"]:
        raise ValueError(f"expected a `python -m uvicorn` command line, got {argv[:3]}")
    return [argv[0], "-c", _PROFILE_RUNNER, str(profile_path), *argv[3:]]


@contextmanager
def radstream_stack(
    state_dir: Path, profile_path: Path | None, *, pipeline: bool = False
) -> Iterator[tuple[Settings, str, int, int]]:
    """(settings, API key, moto PID, gateway PID); every process stopped (by PID) on exit."""
    key = secrets.token_urlsafe(32)
    settings = isolated_settings(state_dir, f"{BENCH_TENANT}:{key}")
    supervisor = Supervisor()
    try:
        moto = supervisor.start(emulator_process_spec(settings))
        # Without the pipeline nothing reacts to manifests: the emulator runs EventBridge, Lambda and Step
        # Functions in its own process, where each manifest's execution costs about 2 s of its CPU (measured)
        # and would bury the ingest figures. On AWS that work is off the PUT path.
        asyncio.run(provision(settings, with_pipeline=pipeline))
        spec = gateway_process_spec(settings, child_env(settings, f"{BENCH_TENANT}:{key}"))
        argv = spec.argv if profile_path is None else profiled_argv(spec.argv, profile_path)
        spec = dataclasses.replace(spec, argv=argv, log_path=state_dir / "logs" / "gateway.log")
        gateway = supervisor.start(spec)
        yield settings, key, moto.pid, gateway.pid
    finally:
        supervisor.stop()


def bench_radstream(maker: StudyMaker, repeats: int, profile_path: Path | None, pipeline: bool) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="radstream-bench-") as state,
        radstream_stack(Path(state), profile_path, pipeline=pipeline) as (settings, key, moto_pid, gateway_pid),
    ):
        base = f"{settings.base_url}/dicomweb"
        auth = {"Authorization": f"Bearer {key}"}
        servers = {"moto": moto_pid, "gateway": gateway_pid}
        warm_study, warm_parts = maker.fresh()
        asyncio.run(stow(base, auth, multipart_bodies(warm_study, warm_parts[:BATCH_INSTANCES]), {}))
        raw: list[Measurement] = []
        gateway: list[Measurement] = []
        for _ in range(repeats):  # interleaved, so drift hits both alike
            raw.append(asyncio.run(raw_puts(settings, maker.fresh()[1], {"moto": moto_pid})))
            study, parts = maker.fresh()
            gateway.append(asyncio.run(stow(base, auth, multipart_bodies(study, parts), servers)))
    return {"raw_put": median_run(raw), "radstream": median_run(gateway)}


# --- Orthanc in a loopback-only network namespace (loadtest/orthanc.py) ---------------------------------


def bench_orthanc(count: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="radstream-bench-orthanc-") as tmp:
        work = Path(tmp)
        with orthanc_process(work) as (pid, port, notes):
            args = [f"--url=http://127.0.0.1:{port}/dicom-web", f"--server-pid={pid}", f"--instances={count}"]
            args += [f"--repeats={repeats}"]
            result = run_client_in_namespace("loadtest.bench_stow", args, work, ORTHANC_CLIENT_TIMEOUT_S)
            return {**result, "notes": notes}


async def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise OrthancUnavailable(f"{url} did not answer within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


def orthanc_client(url: str, server_pid: int, count: int, repeats: int) -> dict[str, Any]:
    """The Orthanc side, run inside the namespace: the same study, bodies and concurrency as for RadStream."""
    maker = StudyMaker(count)
    asyncio.run(_wait_http(url.rsplit("/dicom-web", 1)[0] + "/system", ORTHANC_READY_TIMEOUT_S))
    warm_study, warm_parts = maker.fresh()
    asyncio.run(stow(url, {}, multipart_bodies(warm_study, warm_parts[:BATCH_INSTANCES]), {}))
    runs = []
    for _ in range(repeats):
        study, parts = maker.fresh()
        runs.append(asyncio.run(stow(url, {}, multipart_bodies(study, parts), {"orthanc": server_pid})))
    return median_run(runs)


# --- the whole benchmark ------------------------------------------------------------------------------


def run(quick: bool = False, profile_gateway: Path | None = None, pipeline: bool = False) -> dict[str, Any]:
    """Measure raw PutObject, RadStream STOW-RS and Orthanc STOW-RS (median of repeats).

    ``pipeline`` provisions the pipeline too, so every manifest starts an execution in the emulator.
    """
    count = QUICK_INSTANCES if quick else STUDY_INSTANCES
    repeats = 1 if quick else REPEATS
    maker = StudyMaker(count)
    result: dict[str, Any] = {
        "instances": count,
        "instance_shape": f"CT {ROWS}x{COLS} 16-bit",
        "batch_instances": BATCH_INSTANCES,
        "concurrency": CONCURRENCY,
        "repeats": repeats,
        "cpus": cpus.available(),
        "profiled": profile_gateway is not None,
        "pipeline_trigger": pipeline,
        "load_average_before": os.getloadavg()[0],
    }
    result.update(bench_radstream(maker, repeats, profile_gateway, pipeline))
    try:
        result["orthanc"] = bench_orthanc(count, repeats)
    except (OrthancUnavailable, subprocess.SubprocessError, OSError) as exc:
        result["orthanc"] = {"skipped": str(exc)}
    result["efficiency_stow_vs_raw"] = result["radstream"]["instances_per_s"] / result["raw_put"]["instances_per_s"]
    if "instances_per_s" in result["orthanc"]:
        result["radstream_vs_orthanc"] = result["radstream"]["instances_per_s"] / result["orthanc"]["instances_per_s"]
    return result


def _cpu(m: dict[str, Any]) -> str:
    return ", ".join(f"{name} {cpu / m['instances'] * 1e3:.1f}" for name, cpu in m["server_cpu_s"].items())


def markdown(result: dict[str, Any]) -> str:
    rows = [
        f"{result['instances']} x {result['instance_shape']}, {result['concurrency']} concurrent clients, "
        f"{result['batch_instances']} instances per STOW request, median of {result['repeats']}, "
        f"{result['cpus']} CPUs shared by client and servers",
        "",
        "| path | instances/s | MB/s | server CPU ms/instance | client CPU ms/instance "
        "| other processes' CPU s | failed |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    labels: list[tuple[str, str]] = [
        ("raw_put", "raw aioboto3 PutObject -> moto"),
        ("radstream", "RadStream STOW-RS -> gateway -> moto"),
        ("orthanc", "Orthanc STOW-RS (DICOMweb plugin)"),
    ]
    for key, label in labels:
        m = result[key]
        if "skipped" in m:
            rows.append(f"| {label} | skipped | | {m['skipped'].splitlines()[0][:200]} | | | |")
            continue
        rows.append(
            f"| {label} | {m['instances_per_s']:.1f} | {m['mb_per_s']:.1f} | {_cpu(m)} "
            f"| {m['client_cpu_s'] / m['instances'] * 1e3:.1f} | {m['other_cpu_s']:.2f} | {m['failed_instances']} |"
        )
    rows += [
        "",
        f"- gateway efficiency (STOW / raw PutObject): **{result['efficiency_stow_vs_raw']:.2f}** (target >= 0.9)",
    ]
    if "radstream_vs_orthanc" in result:
        rows.append(f"- RadStream / Orthanc: **{result['radstream_vs_orthanc']:.2f}** (target >= 1.0)")
        rows.append(f"- Orthanc: {result['orthanc']['notes']['version']}, {result['orthanc']['notes']['index']}")
    if not result["pipeline_trigger"]:
        rows.append("- pipeline trigger off: manifests start no Step Functions execution in the emulator")
    rows.append(
        f'- load average before: {result["load_average_before"]:.2f}; "other processes\' CPU" is what '
        "the rest of the machine used during the timed section (high values: numbers are disturbed)"
    )
    if result["profiled"]:
        rows.append("- the gateway ran under cProfile: its throughput here is not comparable")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_INSTANCES} instances, one run per target")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--profile-gateway", type=Path, default=None, help="write a cProfile of the gateway here")
    parser.add_argument("--with-pipeline", action="store_true", help="leave the emulator's pipeline trigger on")
    parser.add_argument(
        "--cpus", type=int, default=None, help="run everything (client and servers) on the first N allowed CPUs"
    )
    parser.add_argument("--orthanc-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.orthanc_client:
        figures = orthanc_client(args.url, args.server_pid, args.instances, args.repeats)
        args.out.write_text(json.dumps(figures))
        return
    if args.cpus is not None:
        cpus.pin(args.cpus)
    result = run(args.quick, args.profile_gateway, args.with_pipeline)
    print(markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
