"""Time from the last acknowledgement to ``completed`` for one CT study sent three ways (a benchmark, not a test).

    .venv/bin/python -m loadtest.bench_runs [--quick] [--out FILE]

Starts its own embedded stack (AWS emulator with its local gaps, Triton, gateway, worker) on free loopback
ports, writes a CT series of 512x512 slices to a folder, and sends it with ``radstream send``'s own code
(the ``radstream send`` command itself, 4 requests at once) as:

* one request holding every slice (the reference);
* ``radstream send``'s defaults: requests of 10 slices;
* one slice per request, as a modality that opens one association per image sends.

Each round sends a new study in each mode, the modes' order rotating round by round. The figure is the
time from the last acknowledgement (client clock, when ``send`` returns) to the study's ``updated_at``
when it turned ``completed`` (written right after the result objects), and how many runs that took.
Target (issue: coalesced runs): the other modes within 1.5x of one request; one request under 3 s.

Beside it, the emulator's floor for one run of the study: the storage round trips a run cannot do
without (each slice's object read and its prepared tensor written by PrepareTensors, the tensor read by
the worker), objects of the same sizes, through the same client, 16 at a time, against the same emulator
process, with nothing decoded or inferred. moto serves every request in one Python process, so this part
of the figure is the emulator's, not the pipeline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from loadtest import synthetic
from loadtest.bench_pipeline import API_KEY, BenchStack
from radstream.clients import open_clients
from radstream.settings import Settings

MODES = {"one_request": 0, "send_defaults": 10, "one_per_request": 1}  # instances per request; 0: all
FULL = {"slices": 200, "rounds": 3}
QUICK = {"slices": 40, "rounds": 1}
COMPLETE_TIMEOUT_S = 300.0
TARGET_RATIO = 1.5
TARGET_ONE_REQUEST_S = 3.0
SOURCE_BYTES = 512 * 512 * 2 + 2048  # one 512x512 16-bit slice and its header
PREPARED_BYTES = 128 * 128 * 4 + 2048  # the model's 128x128 float32 input and the slice's header
FLOOR_IN_FLIGHT = 16  # PrepareTensors: four shards at once, four instances of each at once


async def storage_floor(settings: Settings, slices: int) -> float:
    """Seconds for one run's unavoidable storage round trips against the emulator (see the module text)."""
    source, prepared = b"\x5a" * SOURCE_BYTES, b"\xa5" * PREPARED_BYTES
    async with open_clients(settings) as ctx:
        for i in range(slices):
            await ctx.images.put_bytes(f"bench-floor/source/{i}", source, content_type="application/dicom")
        slots = asyncio.Semaphore(FLOOR_IN_FLIGHT)

        async def prepare(i: int) -> None:
            async with slots:
                await ctx.images.get_bytes(f"bench-floor/source/{i}")
                key = f"bench-floor/prepared/{i}"
                await ctx.images.put_bytes(key, prepared, content_type="application/octet-stream")

        async def infer(i: int) -> None:
            async with slots:
                await ctx.images.get_bytes(f"bench-floor/prepared/{i}")

        started = time.perf_counter()
        await asyncio.gather(*(prepare(i) for i in range(slices)))
        await asyncio.gather(*(infer(i) for i in range(slices)))
        return time.perf_counter() - started


def _write_series(folder: Path, slices: int) -> str:
    uids = synthetic.StudyUids.new()
    folder.mkdir(parents=True)
    for i, data in enumerate(synthetic.ct_series_bytes(slices, uids=uids)):
        (folder / f"{i:04d}.dcm").write_bytes(data)
    return uids.study


async def _completed(url: str, study: str) -> dict[str, Any]:
    """The study's status once it left received/processing (``failed`` counts as not completed)."""
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        while True:
            body: dict[str, Any] = (await client.get(f"{url}/v1/studies/{study}")).json()
            if body.get("status") in ("completed", "failed", "no_model"):
                return body
            if time.monotonic() > deadline:
                return {**body, "status": f"still {body.get('status')} after {COMPLETE_TIMEOUT_S:.0f} s"}
            await asyncio.sleep(0.25)


async def _one(url: str, folder: Path, study: str, per_request: int, slices: int) -> dict[str, Any]:
    started = time.time()
    batch = per_request or slices
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "radstream"),
        "send",
        str(folder),
        "--url",
        url,
        "--api-key",
        API_KEY,
        "--batch",
        str(batch),
        "--concurrency",
        "4",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    acked = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"radstream send exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    body = await _completed(url, study)
    row: dict[str, Any] = {
        "stored": slices,  # radstream send exits 0 only when every file found was stored
        "requests": -(-slices // batch),
        "send_s": acked - started,
        "status": body.get("status"),
        "runs": body.get("runs"),
    }
    if body.get("status") == "completed":
        row["ack_to_completed_s"] = max(0.0, datetime.fromisoformat(body["updated_at"]).timestamp() - acked)
    return row


async def run_async(quick: bool = False, *, slices: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    config = QUICK if quick else FULL
    slices = slices or config["slices"]
    rounds = rounds or config["rounds"]
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="radstream-bench-runs-") as tmp:
        async with BenchStack(Path(tmp) / "stack") as stack:
            warm = Path(tmp) / "warm"
            await _one(stack.url, warm, _write_series(warm, 4), 2, 4)  # imports, first Triton batch
            order = list(MODES)
            for r in range(rounds):
                for mode in order[r % len(order) :] + order[: r % len(order)]:
                    folder = Path(tmp) / f"{mode}-{r}"
                    study = await asyncio.to_thread(_write_series, folder, slices)
                    row = await _one(stack.url, folder, study, MODES[mode], slices)
                    samples[mode].append(row)
                    print(f"round {r + 1} {mode}: {json.dumps(row)}", flush=True)
                    await asyncio.sleep(1)
            floors = [await storage_floor(stack.settings, slices) for _ in range(3)]
    result: dict[str, Any] = {"slices": slices, "rounds": rounds, "modes": {}}
    result["storage_floor_s"] = statistics.median(floors)
    for mode, rows in samples.items():
        times = [row["ack_to_completed_s"] for row in rows if "ack_to_completed_s" in row]
        result["modes"][mode] = {
            "instances_per_request": MODES[mode] or slices,
            "samples": rows,
            "completed": len(times),
            "median_s": statistics.median(times) if times else None,
            "max_s": max(times) if times else None,
            "runs": [row["runs"] for row in rows],
        }
    reference = result["modes"]["one_request"]["median_s"]
    for mode in ("send_defaults", "one_per_request"):
        median = result["modes"][mode]["median_s"]
        result[f"ratio_{mode}_vs_one_request"] = median / reference if median is not None and reference else None
    result["target_ratio"] = TARGET_RATIO
    result["target_one_request_s"] = TARGET_ONE_REQUEST_S
    return result


def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['slices']} CT slices 512x512, {result['rounds']} round(s), 4 requests at once",
        "",
        "| sent as | instances per request | completed | last ack -> completed, median s | max s | runs | "
        "vs one request |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for mode, row in result["modes"].items():
        ratio = result.get(f"ratio_{mode}_vs_one_request")
        lines.append(
            f"| {mode.replace('_', ' ')} | {row['instances_per_request']} | {row['completed']}/{len(row['samples'])} "
            f"| {_num(row['median_s'], '.2f')} | {_num(row['max_s'], '.2f')} | {row['runs']} "
            f"| {_num(ratio, '.2f') if mode != 'one_request' else '1'} |"
        )
    lines += [
        "",
        f"Targets: every mode within {result['target_ratio']}x of one request; one request under "
        f"{result['target_one_request_s']:.0f} s.",
        "",
        f"Emulator floor of one run (its {result['slices']} slice reads, tensor writes and tensor reads alone, "
        f"{FLOOR_IN_FLIGHT} at a time, median of 3): {result['storage_floor_s']:.2f} s.",
    ]
    return "\n".join(lines)


def run(quick: bool = False, **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run_async(quick, **kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slices", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.quick, slices=args.slices, rounds=args.rounds)
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
