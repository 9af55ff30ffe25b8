"""The gateway's multipart/related parser against python-multipart behind the same interface, in one run.

Two measurements, each alternating the two parsers round by round so that drift hits both alike, and
each reporting the ratio of the two *within* a round (python-multipart / hand-written; above 1 the
library is faster):

* **parser** (default): the same STOW-RS bodies, cut into ``--chunk`` byte chunks (64 KiB, as uvicorn
  hands them over), fed through each parser in this process: 200 parts of a 512x512 16-bit CT slice
  (about 512 KiB each) and 2000 parts of a 44x44 one (about 4 KiB each). MB/s of body and CPU
  microseconds per part; both parsers' parts are checked to be byte-identical first.
* **stow** (``--stow``): one moto emulator and two gateway processes, identical but for the parser (set
  through ``loadtest/multipart_switch``, nothing in product code), the same study shape and client as
  ``loadtest.bench_stow`` (CT 512x512, 10 instances per request, 4 concurrent clients), alternately
  through each gateway: instances/s and the gateway's CPU per instance.

Run::

    .venv/bin/python -m loadtest.bench_multipart [--rounds 7] [--chunk 65536] [--out parser.json]
    .venv/bin/python -m loadtest.bench_multipart --stow [--instances 200] [--rounds 7] [--out stow.json]

Both stop by themselves (a few seconds per round); servers bind 127.0.0.1 only. python-multipart is a
development dependency only (the gateway keeps its own parser, see docs/decisions.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import json
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from gateway.dicomweb.multipart import Event, MultipartParser, PartData, PartEnd, PartStart
from infra.local.emulator.process import emulator_process_spec
from infra.local.processes import free_port
from infra.local.provision import provision
from infra.local.stack import child_env, gateway_process_spec, isolated_settings
from infra.local.supervisor import Supervisor
from loadtest import bench_stow, cpus
from loadtest.measure import Measurement
from loadtest.multipart_library import LibraryMultipartParser
from loadtest.synthetic import ct_series_bytes
from radstream.settings import PROJECT_ROOT

CHUNK = 64 * 1024
ROUNDS = 7
MIN_MEASURE_S = 0.3  # each parser's share of a round lasts at least this long (whole passes over the body)
MB = 1_000_000
SWITCH_DIR = Path(__file__).resolve().parent / "multipart_switch"
SWITCH_VAR = "RADSTREAM_BENCH_MULTIPART_PARSER"


class Parser(Protocol):
    parts_started: int

    @property
    def complete(self) -> bool: ...

    def feed(self, chunk: bytes) -> list[Event]: ...


# name -> (class, "module:Class" for the gateway switch); the first is the reference of every ratio
PARSERS: dict[str, tuple[Callable[[str], Parser], str]] = {
    "hand-written": (MultipartParser, "gateway.dicomweb.multipart:MultipartParser"),
    "python-multipart": (LibraryMultipartParser, "loadtest.multipart_library:LibraryMultipartParser"),
}
REFERENCE, CANDIDATE = PARSERS


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --- parser alone ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    boundary: str
    chunks: list[bytes]
    parts: int
    body_bytes: int


def stow_body(parts: list[bytes], boundary: str) -> bytes:
    """The body ``loadtest.bench_stow`` sends: a Content-Type header per part, no preamble, no epilogue."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(piece for part in parts for piece in (head, part, b"\r\n")) + f"--{boundary}--\r\n".encode()


def workload(name: str, parts: list[bytes], chunk: int) -> Workload:
    boundary = uuid.uuid4().hex
    body = stow_body(parts, boundary)
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return Workload(name, boundary, chunks, len(parts), len(body))


def workloads(chunk: int) -> list[Workload]:
    ct = ct_series_bytes(200)
    small = ct_series_bytes(50, rows=44, cols=44)
    return [
        workload(f"200 x {len(ct[0]) / 1024:.0f} KiB CT slices", ct, chunk),
        workload(f"2000 x {len(small[0]) / 1024:.1f} KiB parts", [small[i % len(small)] for i in range(2000)], chunk),
    ]


def consume(make: Callable[[str], Parser], w: Workload) -> int:
    """Feed the whole body; the number of parts ended (every event is looked at, as the STOW service does)."""
    parser = make(w.boundary)
    ended = 0
    size = 0
    for chunk in w.chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                size = 0
            elif isinstance(event, PartData):
                size += len(event.data)
            elif isinstance(event, PartEnd):
                ended += 1
    if not parser.complete or ended != w.parts:
        raise RuntimeError(f"{make!r}: {ended}/{w.parts} parts, complete={parser.complete}")
    return ended


def digests(make: Callable[[str], Parser], w: Workload) -> list[tuple[tuple[tuple[str, str], ...], str]]:
    """(headers, SHA-256 of the data) of every part, to check that both parsers return the same parts."""
    parser = make(w.boundary)
    out: list[tuple[tuple[tuple[str, str], ...], str]] = []
    headers: tuple[tuple[str, str], ...] = ()
    digest = hashlib.sha256()
    for chunk in w.chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                headers, digest = tuple(sorted(event.headers.items())), hashlib.sha256()
            elif isinstance(event, PartData):
                digest.update(event.data)
            elif isinstance(event, PartEnd):
                out.append((headers, digest.hexdigest()))
    return out


def timed(make: Callable[[str], Parser], w: Workload, passes: int) -> dict[str, float]:
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(passes):
        consume(make, w)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "mb_per_s": passes * w.body_bytes / MB / wall,
        "cpu_us_per_part": cpu / (passes * w.parts) * 1e6,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def bench_parsers(rounds: int, chunk: int) -> dict[str, Any]:
    result: dict[str, Any] = {"chunk_bytes": chunk, "rounds": rounds, "cpus": cpus.available(), "workloads": {}}
    result["load_average_before"] = os.getloadavg()[0]
    for w in workloads(chunk):
        reference = digests(PARSERS[REFERENCE][0], w)
        for name, (make, _) in PARSERS.items():
            if digests(make, w) != reference:
                raise RuntimeError(f"{name} does not return the parts of {REFERENCE} for {w.name}")
        consume(PARSERS[REFERENCE][0], w)  # warm-up
        t0 = time.perf_counter()
        consume(PARSERS[REFERENCE][0], w)
        passes = max(1, round(MIN_MEASURE_S / (time.perf_counter() - t0)))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in PARSERS}
        ratios: dict[str, list[float]] = {"throughput": [], "cpu_per_part": []}
        for r in range(rounds):
            order = list(PARSERS) if r % 2 == 0 else list(reversed(PARSERS))
            this = {name: timed(PARSERS[name][0], w, passes) for name in order}
            for name in PARSERS:
                runs[name].append(this[name])
            ratios["throughput"].append(this[CANDIDATE]["mb_per_s"] / this[REFERENCE]["mb_per_s"])
            ratios["cpu_per_part"].append(this[CANDIDATE]["cpu_us_per_part"] / this[REFERENCE]["cpu_us_per_part"])
        result["workloads"][w.name] = {
            "parts": w.parts,
            "body_bytes": w.body_bytes,
            "passes_per_measurement": passes,
            "parsers": {
                name: {
                    "mb_per_s": summary([m["mb_per_s"] for m in ms]),
                    "cpu_us_per_part": summary([m["cpu_us_per_part"] for m in ms]),
                    "runs": ms,
                }
                for name, ms in runs.items()
            },
            "ratio_throughput": summary(ratios["throughput"]),
            "ratio_cpu_per_part": summary(ratios["cpu_per_part"]),
            "ratio_runs": ratios,
        }
    return result


def parser_markdown(result: dict[str, Any]) -> str:
    rows = [
        f"{result['rounds']} alternating rounds, {result['chunk_bytes'] // 1024} KiB chunks, {result['cpus']} CPUs, "
        f"load average {result['load_average_before']:.2f} before; median (min-max)",
        "",
        "| body | parser | MB/s | CPU us/part |",
        "|---|---|---:|---:|",
    ]
    for wname, w in result["workloads"].items():
        for name, p in w["parsers"].items():
            mb, us = p["mb_per_s"], p["cpu_us_per_part"]
            rows.append(
                f"| {wname} | {name} | {mb['median']:.0f} ({mb['min']:.0f}-{mb['max']:.0f}) "
                f"| {us['median']:.1f} ({us['min']:.1f}-{us['max']:.1f}) |"
            )
    rows.append("")
    for wname, w in result["workloads"].items():
        t, c = w["ratio_throughput"], w["ratio_cpu_per_part"]
        rows.append(
            f"- {wname}: {CANDIDATE} / {REFERENCE} throughput **{t['median']:.2f}** (min {t['min']:.2f}, "
            f"max {t['max']:.2f}); CPU per part {c['median']:.2f} (min {c['min']:.2f}, max {c['max']:.2f})"
        )
    return "\n".join(rows)


# --- end to end: one emulator, one gateway per parser ------------------------------------------------------


@contextmanager
def two_gateways(state_dir: Path) -> Iterator[tuple[str, int, dict[str, tuple[str, int]]]]:
    """(API key, moto PID, {parser: (STOW base URL, gateway PID)}); every process stopped (by PID) on exit."""
    key = secrets.token_urlsafe(32)
    keys = f"{bench_stow.BENCH_TENANT}:{key}"
    settings = isolated_settings(state_dir, keys)
    supervisor = Supervisor()
    try:
        moto = supervisor.start(emulator_process_spec(settings))
        asyncio.run(provision(settings, with_pipeline=False))
        gateways: dict[str, tuple[str, int]] = {}
        for name, (_, target) in PARSERS.items():
            mine = settings.model_copy(update={"http_port": free_port()})
            env = child_env(mine, keys)
            env["PYTHONPATH"] = os.pathsep.join([str(SWITCH_DIR), str(PROJECT_ROOT)])
            env[SWITCH_VAR] = target
            log_path = state_dir / "logs" / f"gateway-{name}.log"
            spec = dataclasses.replace(gateway_process_spec(mine, env), name=f"gateway-{name}", log_path=log_path)
            proc = supervisor.start(spec)
            if f"[bench] multipart parser: {target.replace(':', '.')}" not in log_path.read_text():
                raise RuntimeError(f"gateway-{name} did not load {target}: see {log_path}")
            gateways[name] = (f"{mine.base_url}/dicomweb", proc.pid)
        yield key, moto.pid, gateways
    finally:
        supervisor.stop()


def bench_stow_paths(instances: int, rounds: int) -> dict[str, Any]:
    maker = bench_stow.StudyMaker(instances)
    result: dict[str, Any] = {
        "instances": instances,
        "instance_shape": f"CT {bench_stow.ROWS}x{bench_stow.COLS} 16-bit",
        "batch_instances": bench_stow.BATCH_INSTANCES,
        "concurrency": bench_stow.CONCURRENCY,
        "rounds": rounds,
        "cpus": cpus.available(),
        "load_average_before": os.getloadavg()[0],
    }
    with (
        tempfile.TemporaryDirectory(prefix="radstream-bench-multipart-") as state,
        two_gateways(Path(state)) as (key, moto_pid, gateways),
    ):
        auth = {"Authorization": f"Bearer {key}"}
        for url, _ in gateways.values():  # warm-up: one request per client connection
            study, parts = maker.fresh()
            bodies = bench_stow.multipart_bodies(study, parts[: bench_stow.BATCH_INSTANCES * bench_stow.CONCURRENCY])
            asyncio.run(bench_stow.stow(url, auth, bodies, {}))
        runs: dict[str, list[Measurement]] = {name: [] for name in gateways}
        ratios: dict[str, list[float]] = {"instances_per_s": [], "gateway_cpu_per_instance": []}
        for r in range(rounds):
            order = list(gateways) if r % 2 == 0 else list(reversed(gateways))
            this: dict[str, Measurement] = {}
            for name in order:
                url, pid = gateways[name]
                study, parts = maker.fresh()
                bodies = bench_stow.multipart_bodies(study, parts)
                this[name] = asyncio.run(bench_stow.stow(url, auth, bodies, {"moto": moto_pid, "gateway": pid}))
            for name in gateways:
                if this[name].failed_instances:
                    raise RuntimeError(f"gateway-{name}: {this[name].failed_instances} instances not stored")
                runs[name].append(this[name])
            ratios["instances_per_s"].append(this[CANDIDATE].instances_per_s / this[REFERENCE].instances_per_s)
            ratios["gateway_cpu_per_instance"].append(
                this[CANDIDATE].server_cpu_s["gateway"] / this[REFERENCE].server_cpu_s["gateway"]
            )
    result["gateways"] = {
        name: {
            "instances_per_s": summary([m.instances_per_s for m in ms]),
            "gateway_cpu_ms_per_instance": summary([m.server_cpu_s["gateway"] / m.instances * 1e3 for m in ms]),
            "moto_cpu_ms_per_instance": summary([m.server_cpu_s["moto"] / m.instances * 1e3 for m in ms]),
            "other_cpu_s": summary([m.other_cpu_s for m in ms]),
            "runs": [m.as_dict() for m in ms],
        }
        for name, ms in runs.items()
    }
    result["ratio_instances_per_s"] = summary(ratios["instances_per_s"])
    result["ratio_gateway_cpu_per_instance"] = summary(ratios["gateway_cpu_per_instance"])
    result["ratio_runs"] = ratios
    return result


def stow_markdown(result: dict[str, Any]) -> str:
    rows = [
        f"{result['instances']} x {result['instance_shape']} per round, {result['concurrency']} concurrent clients, "
        f"{result['batch_instances']} instances per request, {result['rounds']} alternating rounds, "
        f"{result['cpus']} CPUs shared by client, emulator and gateways, load average "
        f"{result['load_average_before']:.2f} before; median (min-max)",
        "",
        "| gateway parser | instances/s | gateway CPU ms/instance | moto CPU ms/instance | other processes' CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, g in result["gateways"].items():
        ips, gw, moto, other = (
            g["instances_per_s"],
            g["gateway_cpu_ms_per_instance"],
            g["moto_cpu_ms_per_instance"],
            g["other_cpu_s"],
        )
        rows.append(
            f"| {name} | {ips['median']:.1f} ({ips['min']:.1f}-{ips['max']:.1f}) "
            f"| {gw['median']:.2f} ({gw['min']:.2f}-{gw['max']:.2f}) | {moto['median']:.2f} "
            f"| {other['median']:.2f} |"
        )
    t, c = result["ratio_instances_per_s"], result["ratio_gateway_cpu_per_instance"]
    rows += [
        "",
        f"- {CANDIDATE} / {REFERENCE} instances/s **{t['median']:.2f}** (min {t['min']:.2f}, max {t['max']:.2f}); "
        f"gateway CPU per instance {c['median']:.2f} (min {c['min']:.2f}, max {c['max']:.2f})",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stow", action="store_true", help="end to end: two gateways, one per parser")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds (default {ROUNDS})")
    parser.add_argument("--chunk", type=int, default=CHUNK, help=f"body chunk size in bytes (default {CHUNK})")
    parser.add_argument("--instances", type=int, default=bench_stow.STUDY_INSTANCES, help="--stow: CT slices per round")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.stow:
        result = bench_stow_paths(args.instances, args.rounds)
        print(stow_markdown(result))
    else:
        result = bench_parsers(args.rounds, args.chunk)
        print(parser_markdown(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
