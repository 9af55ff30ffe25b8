"""End-to-end latency of the embedded pipeline under open-loop load (a benchmark, not a test).

    .venv/bin/python -m loadtest.bench_pipeline [--quick] [--out DIR]

Starts its own stack (AWS emulator with its local gaps, Triton, gateway, worker) on free loopback ports,
then for each arrival rate sends single-image CT studies open-loop (each at its scheduled time, whether
or not earlier ones finished) for a bounded time. Latency = STOW acknowledged (client clock) -> result
available (the study's ``updated_at`` when it turned ``completed``, written right after the result
objects). Per-stage times come from the telemetry data lake. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from infra.local.emulator.process import emulator_process_spec
from infra.local.provision import provision
from infra.local.stack import child_env, isolated_settings, process_specs
from infra.local.supervisor import Supervisor
from loadtest import synthetic
from radstream.settings import Settings
from radstream.stats import download_datalake, run_queries

FULL_RATES = (1.0, 2.0, 4.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 17.0, 20.0, 35.0, 50.0)
SATURATED_P95_MS = 5000.0  # beyond this (or with studies left incomplete) higher rates are not run
QUICK_RATES = (2.0, 5.0)
FULL_SECONDS = 20.0
QUICK_SECONDS = 6.0
DRAIN_TIMEOUT_S = 60.0
POLL_DELAY_S = 3.0
API_KEY = "bench-key-0123456789abcdefghijkl"
BOUNDARY = "RadStreamBench"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Sent:
    study: str
    acked_at: float  # epoch seconds, client clock


def _bodies(count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        uids = synthetic.StudyUids.new()
        data = synthetic.to_bytes(synthetic.ct_slice(uids, 0, rows=256, cols=256))
        body = (
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{BOUNDARY}--".encode()
        )
        out.append((uids.study, body))
    return out


async def _open_loop(url: str, rate: float, seconds: float) -> tuple[list[Sent], int]:
    count = int(rate * seconds)
    bodies = _bodies(count)
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    }
    sent: list[Sent] = []
    errors = 0
    async with httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_connections=200)) as client:

        async def one(i: int, study: str, body: bytes, start: float) -> None:
            nonlocal errors
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await client.post(f"{url}/dicomweb/studies", content=body, headers=headers)
            except httpx.HTTPError:
                errors += 1
                return
            if response.status_code == 200:
                sent.append(Sent(study, time.time()))
            else:
                errors += 1

        start = time.monotonic()
        await asyncio.gather(*(one(i, study, body, start) for i, (study, body) in enumerate(bodies)))
    return sent, errors


async def _collect(url: str, sent: list[Sent]) -> tuple[list[float], int]:
    """Latencies (ms) of completed studies, and how many failed or never completed.

    Each latency ends at the study's own ``updated_at``, so when it is read does not change it; polling
    starts ``POLL_DELAY_S`` after the last request, so the poller does not compete for the CPU with the
    studies still in flight (a status read lists the study's objects).
    """
    latencies: list[float] = []
    pending = {s.study: s for s in sent}
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    failed = 0
    await asyncio.sleep(POLL_DELAY_S)
    async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        while pending and time.monotonic() < deadline:
            for study, item in list(pending.items()):
                body = (await client.get(f"{url}/v1/studies/{study}")).json()
                if body.get("status") == "completed":
                    done = datetime.fromisoformat(body["updated_at"]).timestamp()
                    latencies.append(max(0.0, (done - item.acked_at) * 1e3))
                    del pending[study]
                elif body.get("status") == "failed":
                    failed += 1
                    del pending[study]
            if pending:
                await asyncio.sleep(0.5)
    return latencies, failed + len(pending)


class BenchStack:
    """The embedded stack on free ports, started with the same specs `radstream up` uses."""

    def __init__(self, state: Path, **overrides: object) -> None:
        self.settings = isolated_settings(state, f"bench:{API_KEY}", worker_poll_wait_s=1, **overrides)
        self.url = f"http://127.0.0.1:{self.settings.http_port}"
        self.supervisor = Supervisor()

    async def __aenter__(self) -> BenchStack:
        import dataclasses

        logs = self.settings.state_dir / "logs"
        env = child_env(self.settings, f"bench:{API_KEY}")
        self.supervisor.start(dataclasses.replace(emulator_process_spec(self.settings), log_path=logs / "aws.log"))
        await provision(self.settings)
        for spec in process_specs(self.settings, env):
            self.supervisor.start(dataclasses.replace(spec, log_path=logs / f"{spec.name}.log"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.supervisor.stop()


async def _stage_breakdown(settings: Settings) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        await download_datalake(settings, Path(tmp))
        results = {r.name: r for r in run_queries(Path(tmp))}
    latency = results.get("stage_latency")
    if latency is None:
        return {}
    rows = [dict(zip(latency.columns, row, strict=True)) for row in latency.rows]
    return {  # studies with results (outcome ok); the benchmark's single-image CT studies all have a model
        str(row["stage"]): {k: float(v) for k, v in row.items() if k not in ("stage", "outcome")}
        for row in rows
        if row["outcome"] == "ok"
    }


async def run_async(quick: bool = False) -> dict[str, Any]:
    rates = QUICK_RATES if quick else FULL_RATES
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="radstream-bench-") as tmp:
        async with BenchStack(Path(tmp)) as stack:
            await _open_loop(stack.url, 2.0, 2.0)  # warm-up (imports, first Triton batch)
            await asyncio.sleep(3)
            for rate in rates:
                sent, errors = await _open_loop(stack.url, rate, seconds)
                latencies, incomplete = await _collect(stack.url, sent)
                rows.append(
                    {
                        "rate_per_s": rate,
                        "seconds": seconds,
                        "offered": int(rate * seconds),
                        "acknowledged": len(sent),
                        "stow_errors": errors,
                        "completed": len(latencies),
                        "incomplete": incomplete,
                        "p50_ms": percentile(latencies, 50),
                        "p95_ms": percentile(latencies, 95),
                        "p99_ms": percentile(latencies, 99),
                        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
                        "latencies_ms": latencies,
                    }
                )
                print(_row_text(rows[-1]), flush=True)
                if incomplete or errors or rows[-1]["p95_ms"] > SATURATED_P95_MS:
                    skipped = [r for r in rates if r > rate]
                    if skipped:
                        print(f"saturated at {rate}/s: not running {skipped}", flush=True)
                    break
                await asyncio.sleep(2)
            await asyncio.sleep(2)  # the last Firehose delivery
            stages = await _stage_breakdown(stack.settings)
    sustained = [r["rate_per_s"] for r in rows if r["incomplete"] == 0 and r["stow_errors"] == 0 and r["p95_ms"] < 1000]
    return {
        "rates": rows,
        "rates_not_run": [r for r in rates if r > rows[-1]["rate_per_s"]] if rows else list(rates),
        "stages": stages,
        "max_sustained_rate_p95_under_1s": max(sustained) if sustained else None,
    }


def _row_text(r: dict[str, Any]) -> str:
    return (
        f"| {r['rate_per_s']:.0f} | {r['acknowledged']}/{r['offered']} | {r['completed']} | "
        f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| studies/s offered | acknowledged | completed | p50 ms | p95 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|",
        *[_row_text(r) for r in result["rates"]],
        "",
        f"Highest rate with p95 under 1 s and every study completed: {result['max_sustained_rate_p95_under_1s']}",
        f"Rates not run (the previous one saturated the stack): {result.get('rates_not_run') or 'none'}",
        "",
        "| stage | events | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage, values in result["stages"].items():
        cells = [f"{values['events']:.0f}", *(f"{values[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms"))]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    print(markdown(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
