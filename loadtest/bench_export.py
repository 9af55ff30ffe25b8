"""Export latency and its cost to the pipeline (a benchmark, not a test).

    .venv/bin/python -m loadtest.bench_export [--quick] [--out FILE]

Two embedded stacks, one after the other, on free loopback ports. The first exports every result to two
destinations on loopback: a DIMSE storage SCP (pynetdicom, C-STORE) and a DICOMweb STOW-RS receiver (a
threaded HTTP server in this process that parses every part as DICOM and answers as PS3.18 says). Both
keep what they received. Single-image CT studies arrive open-loop at 5 studies/s, then at 10 studies/s.
The second stack has no destinations and takes the same two loads.

Figures: result -> delivered per destination (the study's ``updated_at`` when it turned ``completed``,
written right after its result objects, to the destination's ``sent_at``), p50/p95, at 5 studies/s; and
acknowledgement -> completed p95 at each rate with and without export. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from infra.local.processes import free_port
from loadtest.bench_pipeline import API_KEY, BenchStack, _collect, _open_loop, percentile
from loadtest.measure import cpu_seconds

FULL = {"seconds": 20.0, "rates": (5.0, 10.0)}
QUICK = {"seconds": 6.0, "rates": (2.0, 4.0)}
DELIVERY_TIMEOUT_S = 120.0


class _StowReceiver(BaseHTTPRequestHandler):
    """POST .../studies: multipart/related parts, each read with pydicom; 200 with ReferencedSOPSequence."""

    protocol_version = "HTTP/1.1"
    received: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        boundary = self.headers.get_content_type() and self.headers.get_param("boundary")
        referenced = []
        for part in body.split(f"--{boundary}".encode())[1:-1]:
            _, _, payload = part.partition(b"\r\n\r\n")
            ds = pydicom.dcmread(io.BytesIO(payload.removesuffix(b"\r\n")))
            type(self).received.append(str(ds.SOPInstanceUID))
            referenced.append(
                {
                    "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                    "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                }
            )
        answer = json.dumps({"00081199": {"vr": "SQ", "Value": referenced}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _receivers() -> tuple[dict[str, Any], list[str], list[str], Any, ThreadingHTTPServer]:
    """(destinations document, DIMSE received UIDs, STOW received UIDs, the SCP, the HTTP server)."""
    dimse_received: list[str] = []
    ae = AE(ae_title="BENCHSCP")
    for context in (Comprehensive3DSRStorage, SegmentationStorage):
        ae.add_supported_context(context)

    def on_store(event: Any) -> int:
        dimse_received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    dimse_port, http_port = free_port(), free_port()
    scp = ae.start_server(("127.0.0.1", dimse_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    handler = type("Receiver", (_StowReceiver,), {"received": []})
    http = ThreadingHTTPServer(("127.0.0.1", http_port), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    document = [
        {
            "tenant": "bench",
            "name": "pacs",
            "kind": "dimse",
            "host": "127.0.0.1",
            "port": dimse_port,
            "ae_title": "BENCHSCP",
        },
        {"tenant": "bench", "name": "archive", "kind": "dicomweb", "url": f"http://127.0.0.1:{http_port}"},
    ]
    return {"destinations": document}, dimse_received, handler.received, scp, http


async def _deliveries(url: str, studies: list[str]) -> dict[str, list[float]]:
    """Destination -> result-to-delivered seconds of each study once every export of it ended."""
    out: dict[str, list[float]] = {}
    pending = set(studies)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=10.0, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        while pending and time.monotonic() < deadline:
            for study in list(pending):
                body = (await client.get(f"{url}/v1/studies/{study}")).json()
                exports = body.get("exports") or []
                if body.get("status") != "completed" or not exports:
                    continue
                if any(e["status"] == "pending" for e in exports):
                    continue
                done = datetime.fromisoformat(body["updated_at"]).timestamp()
                for e in exports:
                    if e["status"] == "sent":
                        sent = datetime.fromisoformat(e["sent_at"]).timestamp()
                        out.setdefault(e["destination"], []).append(max(0.0, sent - done))
                    else:
                        out.setdefault(f"{e['destination']} failed", []).append(float("nan"))
                pending.discard(study)
            if pending:
                await asyncio.sleep(0.5)
    out["not delivered in time"] = [float("nan")] * len(pending)
    return out


async def _load(stack: BenchStack, rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop load; with each stack process's CPU per acknowledged study over it (ms)."""
    pids = {spec.name: proc.pid for spec, proc in stack.supervisor.children}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sent, errors = await _open_loop(stack.url, rate, seconds)
    latencies, incomplete = await _collect(stack.url, sent)
    cpu = {name: (cpu_seconds(pid) - before[name]) * 1e3 / max(1, len(sent)) for name, pid in pids.items()}
    return {
        "cpu_ms_per_study": cpu,
        "rate_per_s": rate,
        "acknowledged": len(sent),
        "stow_errors": errors,
        "completed": len(latencies),
        "incomplete": incomplete,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "studies": [s.study for s in sent],
    }


async def run_async(quick: bool = False) -> dict[str, Any]:
    config = QUICK if quick else FULL
    low, high = config["rates"]
    seconds = config["seconds"]
    result: dict[str, Any] = {"seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="radstream-bench-export-") as tmp:
        document, dimse_received, stow_received, scp, http = _receivers()
        try:
            async with BenchStack(
                Path(tmp) / "with",
                export_destinations=json.dumps(document["destinations"]),
                export_timeout_s=10.0,
            ) as stack:
                await _open_loop(stack.url, 2.0, 2.0)  # warm-up
                await asyncio.sleep(3)
                row = await _load(stack, low, seconds)
                delivered = await _deliveries(stack.url, row["studies"])
                result["delivery"] = {
                    "rate_per_s": low,
                    "studies": len(row["studies"]),
                    "destinations": {
                        name: {
                            "delivered": sum(1 for v in values if v == v),
                            "p50_s": percentile([v for v in values if v == v], 50),
                            "p95_s": percentile([v for v in values if v == v], 95),
                        }
                        for name, values in delivered.items()
                        if values
                    },
                    "dimse_objects_received": len(dimse_received),
                    "dimse_distinct": len(set(dimse_received)),
                    "stow_objects_received": len(stow_received),
                }
                await asyncio.sleep(2)
                with_high = await _load(stack, high, seconds)
        finally:
            scp.shutdown()
            http.shutdown()
        async with BenchStack(Path(tmp) / "without") as stack:
            await _open_loop(stack.url, 2.0, 2.0)
            await asyncio.sleep(3)
            without_low = await _load(stack, low, seconds)
            await asyncio.sleep(2)
            without_high = await _load(stack, high, seconds)
    row_low = row
    for each in (row_low, with_high, without_low, without_high):
        each.pop("studies", None)
    result["end_to_end"] = {
        "with_export_low": row_low,
        "without_export_low": without_low,
        "with_export_high": with_high,
        "without_export_high": without_high,
    }
    result["p95_ratio_low"] = _ratio(row_low, without_low)
    result["p95_ratio_high"] = _ratio(with_high, without_high)
    return result


def _ratio(with_export: dict[str, Any], without: dict[str, Any]) -> float | None:
    p95 = without["p95_ms"]
    return with_export["p95_ms"] / p95 if p95 == p95 and p95 > 0 else None


def markdown(result: dict[str, Any]) -> str:
    d = result["delivery"]
    lines = [
        f"Result -> delivered, {d['studies']} single-image CT studies at {d['rate_per_s']:.0f}/s, "
        f"two destinations on loopback:",
        "",
        "| destination | delivered | p50 s | p95 s |",
        "|---|---:|---:|---:|",
    ]
    for name, v in d["destinations"].items():
        lines.append(f"| {name} | {v['delivered']} | {v['p50_s']:.2f} | {v['p95_s']:.2f} |")
    lines += [
        "",
        f"DIMSE objects received {d['dimse_objects_received']} ({d['dimse_distinct']} distinct); STOW-RS objects "
        f"received {d['stow_objects_received']}.",
        "",
        "| acknowledged -> completed | acknowledged | completed | incomplete | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in result["end_to_end"].items():
        lines.append(
            f"| {label.rsplit('_', 1)[0].replace('_', ' ')} ({row['rate_per_s']:.0f}/s) | {row['acknowledged']} | "
            f"{row['completed']} | "
            f"{row['incomplete']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |"
        )
    names = sorted({n for row in result["end_to_end"].values() for n in row["cpu_ms_per_study"]})
    lines += ["", "| CPU ms per study | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, row in result["end_to_end"].items():
        cells = " | ".join(f"{row['cpu_ms_per_study'].get(n, 0.0):.1f}" for n in names)
        lines.append(f"| {label.rsplit('_', 1)[0].replace('_', ' ')} ({row['rate_per_s']:.0f}/s) | {cells} |")
    lines.append("")
    for key in ("p95_ratio_low", "p95_ratio_high"):
        ratio = result[key]
        shown = "n/a" if ratio is None else format(ratio, ".2f")
        lines.append(f"p95 with export / without, {key.rsplit('_', 1)[1]} rate: {shown}")
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
