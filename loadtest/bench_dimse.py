"""DIMSE C-STORE ingest: RadStream's listener with 1 and 4 associations, against Orthanc's C-STORE SCP with
the same sender, against RadStream's own STOW-RS and raw S3 PutObject, in one run.

One synthetic CT study (200 slices, 512x512, 16-bit; 40 with ``--quick``) is made before any clock starts.
The sender is pynetdicom in this process (the same for RadStream and Orthanc), Explicit VR Little Endian,
the instances split evenly over the associations, each association in a thread of its own. CPU seconds
of each server process come from ``/proc`` around the timed section; the listener's peak RSS (VmHWM) at
the end. Orthanc runs in a loopback-only network namespace, as in loadtest/bench_stow.py, and its sender
in the same namespace (this module re-invokes itself with ``--orthanc-client``).

Run (as root, for ``ip netns``)::

    .venv/bin/python -m loadtest.bench_dimse [--quick] [--out dimse.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from infra.local.stack import child_env, dimse_process_spec, tcp_open
from infra.local.supervisor import Supervisor
from loadtest import cpus
from loadtest.bench_stow import (
    BATCH_INSTANCES,
    BENCH_TENANT,
    CONCURRENCY,
    StudyMaker,
    multipart_bodies,
    radstream_stack,
    raw_puts,
    stow,
)
from loadtest.measure import Clock, Measurement, median_run
from loadtest.orthanc import OrthancUnavailable, orthanc_process, run_client_in_namespace

STUDY_INSTANCES = 200
QUICK_INSTANCES = 40
REPEATS = 3
ASSOCIATIONS = (1, 4)
CALLING_AE = "BENCH"
ORTHANC_AE = "ORTHANC"
READY_TIMEOUT_S = 60.0


def datasets(parts: list[bytes]) -> list[Dataset]:
    import io

    import pydicom

    return [pydicom.dcmread(io.BytesIO(part)) for part in parts]


def cstore(
    address: tuple[str, int], called: str, items: list[Dataset], associations: int, servers: dict[str, int]
) -> Measurement:
    """Send ``items`` over ``associations`` associations at once; every status must be success."""
    shares = [items[i::associations] for i in range(associations)]
    failures: list[str] = []
    ready = threading.Barrier(associations + 1)

    def sender(share: list[Dataset]) -> None:
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate(*address, ae_title=called)
        if assoc.is_established and assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ready.wait()
        if not assoc.is_established:
            failures.append("association not established")
            return
        for ds in share:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0x0000:
                failures.append(f"status {getattr(status, 'Status', None)}")
        assoc.release()

    threads = [threading.Thread(target=sender, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    ready.wait()
    with Clock(servers) as clock:
        for thread in threads:
            thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} C-STORE failures, e.g. {failures[0]}")
    return Measurement.of(clock, len(items), sum(len(ds.PixelData) for ds in items), associations, 0)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_radstream(maker: StudyMaker, repeats: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="radstream-bench-dimse-") as state,
        radstream_stack(Path(state), None) as (settings, key, moto_pid, gateway_pid),
    ):
        supervisor = Supervisor()
        try:
            listener = supervisor.start(dimse_process_spec(settings, child_env(settings, f"{BENCH_TENANT}:{key}")))
            address = (settings.dimse_host, settings.dimse_port)
            base = f"{settings.base_url}/dicomweb"
            auth = {"Authorization": f"Bearer {key}"}
            cstore(address, settings.dimse_ae_title, datasets(maker.fresh()[1][:BATCH_INSTANCES]), 1, {})
            runs: dict[str, list[Measurement]] = {"raw_put": [], "stow": []}
            runs.update({f"cstore_{n}": [] for n in ASSOCIATIONS})
            for _ in range(repeats):  # interleaved, so drift hits each alike
                runs["raw_put"].append(asyncio.run(raw_puts(settings, maker.fresh()[1], {"moto": moto_pid})))
                study, parts = maker.fresh()
                servers = {"moto": moto_pid, "gateway": gateway_pid}
                runs["stow"].append(asyncio.run(stow(base, auth, multipart_bodies(study, parts), servers)))
                for n in ASSOCIATIONS:
                    items = datasets(maker.fresh()[1])
                    servers = {"moto": moto_pid, "dimse": listener.pid}
                    runs[f"cstore_{n}"].append(cstore(address, settings.dimse_ae_title, items, n, servers))
            result: dict[str, Any] = {name: median_run(measured) for name, measured in runs.items()}
            result["listener_peak_rss_mb"] = peak_rss_mb(listener.pid)
            return result
        finally:
            supervisor.stop()


def bench_orthanc(count: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="radstream-bench-orthanc-") as tmp:
        work = Path(tmp)
        with orthanc_process(work) as (pid, _port, notes):
            args = [f"--port={notes['config']['DicomPort']}", f"--server-pid={pid}", f"--instances={count}"]
            args += [f"--repeats={repeats}"]
            return {**run_client_in_namespace("loadtest.bench_dimse", args, work, 900), "notes": notes}


def orthanc_client(port: int, server_pid: int, count: int, repeats: int) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not tcp_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise OrthancUnavailable(f"Orthanc's DICOM port {port} did not open")
        time.sleep(0.2)
    maker = StudyMaker(count)
    cstore(("127.0.0.1", port), ORTHANC_AE, datasets(maker.fresh()[1][:BATCH_INSTANCES]), 1, {})
    out: dict[str, Any] = {}
    for n in ASSOCIATIONS:
        runs = [
            cstore(("127.0.0.1", port), ORTHANC_AE, datasets(maker.fresh()[1]), n, {"orthanc": server_pid})
            for _ in range(repeats)
        ]
        out[f"cstore_{n}"] = median_run(runs)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    count = QUICK_INSTANCES if quick else STUDY_INSTANCES
    repeats = 1 if quick else REPEATS
    maker = StudyMaker(count)
    result: dict[str, Any] = {
        "instances": count,
        "repeats": repeats,
        "stow_concurrency": CONCURRENCY,
        "associations": list(ASSOCIATIONS),
        "cpus": cpus.available(),
    }
    result.update(bench_radstream(maker, repeats))
    try:
        result["orthanc"] = bench_orthanc(count, repeats)
    except (OrthancUnavailable, subprocess.SubprocessError, OSError) as exc:
        result["orthanc"] = {"skipped": str(exc)}
    stow_rate = result["stow"]["instances_per_s"]
    result["cstore_4_vs_stow"] = result["cstore_4"]["instances_per_s"] / stow_rate
    for n in ASSOCIATIONS:
        measured = result[f"cstore_{n}"]
        measured["listener_cpu_ms_per_instance"] = 1e3 * measured["server_cpu_s"]["dimse"] / measured["instances"]
        theirs = result["orthanc"].get(f"cstore_{n}")
        if theirs:
            theirs["orthanc_cpu_ms_per_instance"] = 1e3 * theirs["server_cpu_s"]["orthanc"] / theirs["instances"]
            result[f"cstore_{n}_vs_orthanc"] = measured["instances_per_s"] / theirs["instances_per_s"]
    result["stow_gateway_cpu_ms_per_instance"] = 1e3 * result["stow"]["server_cpu_s"]["gateway"] / count
    return result


def markdown(result: dict[str, Any]) -> str:
    count = result["instances"]
    rows = [
        f"{count} CT slices (512x512, 16-bit), median of {result['repeats']} interleaved runs; "
        f"STOW-RS with {result['stow_concurrency']} concurrent requests of 10.",
        "",
        "| path | instances/s | server CPU per instance |",
        "|---|---|---|",
        f"| raw PutObject (moto) | {result['raw_put']['instances_per_s']:.1f} | |",
        f"| RadStream STOW-RS | {result['stow']['instances_per_s']:.1f} | gateway "
        f"{result['stow_gateway_cpu_ms_per_instance']:.2f} ms |",
    ]
    for n in result["associations"]:
        ours = result[f"cstore_{n}"]
        rows.append(
            f"| RadStream C-STORE, {n} association(s) | {ours['instances_per_s']:.1f} | listener "
            f"{ours['listener_cpu_ms_per_instance']:.2f} ms |"
        )
        theirs = result["orthanc"].get(f"cstore_{n}")
        if theirs:
            rows.append(
                f"| Orthanc C-STORE, {n} association(s) | {theirs['instances_per_s']:.1f} | Orthanc "
                f"{theirs['orthanc_cpu_ms_per_instance']:.2f} ms |"
            )
    if "skipped" in result["orthanc"]:
        rows.append(f"\nOrthanc skipped: {result['orthanc']['skipped'][:200]}")
    rows += ["", f"Listener peak RSS (VmHWM): {result['listener_peak_rss_mb']:.0f} MiB."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--orthanc-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.orthanc_client:
        result = orthanc_client(args.port, args.server_pid, args.instances, args.repeats)
    else:
        result = run(quick=args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
