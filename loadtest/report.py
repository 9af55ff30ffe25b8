"""``report.md`` from the harness's results: machine, command, a summary of ratios, one part per section.

Each section's table comes from its module's ``markdown`` (the same text its ``python -m`` entry prints);
this module adds the summary, what limits each number, and failures.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

TITLES = {
    "inference": "Inference: in-process onnxruntime vs batcher through Triton",
    "stow": "Ingest: raw S3 PutObject vs gateway STOW-RS vs Orthanc",
    "dimse": "Ingest over DIMSE: C-STORE into the listener vs Orthanc's C-STORE SCP, STOW-RS and raw PutObject",
    "pipeline": "Pipeline: end-to-end latency vs open-loop arrival rate",
    "memory": "Memory: gateway peak RSS on one large STOW-RS request",
}
MODULES = {
    "inference": "loadtest.bench_inference",
    "stow": "loadtest.bench_stow",
    "dimse": "loadtest.bench_dimse",
    "pipeline": "loadtest.bench_pipeline",
    "memory": "loadtest.bench_memory",
}
FIGURES = {
    "inference": ["inference.png"],
    "pipeline": ["latency_cdf.png", "throughput_p95.png", "stage_breakdown.png"],
}


def limits(section: str, cpus: int | None) -> list[str]:
    """What limits the numbers of ``section`` on this kind of machine."""
    cores = f"the {cpus}-core CPU" if cpus else "the CPU"
    return {
        "inference": [
            "The tiny model: `lesion_detector` is a small ONNX network, so per-request overhead (gRPC, Triton "
            "scheduling, python-backend shared memory) weighs far more than it would for a production model.",
            f"CPU only: Triton's python backend runs onnxruntime with one thread, and the client, the batcher "
            f"and Triton share {cores}. No GPU; on one, both sides and their ratio change.",
        ],
        "stow": [
            "The emulator: moto is one Python process that keeps objects under 1 MiB (every instance here) in "
            "RAM, so raw PutObject measures moto, not S3; the gateway's efficiency is relative to that floor.",
            f"{cores[0].upper()}{cores[1:]} is shared by the client, moto, the gateway and Orthanc. Orthanc "
            "writes its files and SQLite index to disk (fsync), moto does not.",
        ],
        "dimse": [
            "The emulator, as for STOW-RS: every acknowledged instance is a PutObject to moto first, so raw "
            "PutObject is the ceiling of both doors here.",
            "One association sends one instance at a time (no asynchronous operations): its rate is bounded by "
            "one storage round trip per instance, where STOW-RS writes up to 8 parts of a request at once.",
            f"The sender (pynetdicom, the same for RadStream and Orthanc) shares {cores} with the servers.",
        ],
        "pipeline": [
            "The emulator: S3 notifications, EventBridge and Step Functions run inside moto's single Python "
            "process (Lambda handlers in one local runtime process); absolute latencies say more about the "
            "emulator than about AWS.",
            f"{cores[0].upper()}{cores[1:]} is shared by the load generator, the emulator, the gateway, the "
            "worker and Triton; the tiny model makes inference a small share of the end-to-end time.",
            "Open loop: a rate above what the stack sustains shows as growing latency and incomplete studies "
            "(each rate's drain waits at most 60 s). Stage times come from telemetry over the whole run, warm-up "
            "and every rate together, so their end_to_end is not the client-side latency of any one rate.",
        ],
        "memory": [
            "VmHWM counts the whole gateway process (interpreter, imports, buffers): the baseline before the "
            "request is shown. The emulator's memory, which holds the stored objects, is not counted.",
            f"The body is generated while it is sent, on {cores} shared with moto and the gateway, so MiB/s "
            "includes generating it. Quick and tiny runs send a smaller request (about 190 MiB and 50 MiB); only "
            "the full run sends the 1 GB one.",
        ],
    }[section]


def _num(value: Any, fmt: str = ".2f", suffix: str = "") -> str:
    if isinstance(value, int | float):
        return f"{value:{fmt}}{suffix}"
    return "n/a"


def _state(section: dict[str, Any]) -> str | None:
    if "error" in section:
        return f"failed: {section['error']}"
    if "skipped" in section:
        return f"not run: {section['skipped']}"
    return None


def summary_rows(results: dict[str, Any]) -> list[str]:
    """One row per ratio: measurement, its reference, the ratio."""
    rows: list[str] = []
    inf, stow, pipe, mem = (results.get(k, {}) for k in ("inference", "stow", "pipeline", "memory"))
    dimse = results.get("dimse", {})

    if (problem := _state(inf)) is None:
        b32 = inf["batcher"]["32"]["images_per_s"]
        low, high = inf.get("ratio_batcher32_vs_in_process_b32_range", [float("nan")] * 2)
        rounds = inf.get("rounds", 1)
        rows.append(
            f"| inference | batcher via Triton, 32 callers: {b32:.0f} img/s "
            f"| in-process onnxruntime, batch 32: {inf['in_process_images_per_s']['32']:.0f} img/s "
            f"| batcher / in-process **{inf['ratio_batcher32_vs_in_process_b32']:.2f}** "
            f"(median of {rounds}; {low:.2f} to {high:.2f}) |"
        )
        rows.append(
            f"| inference | batcher, 32 callers: {b32:.0f} img/s "
            f"| batcher, 1 caller: {inf['batcher']['1']['images_per_s']:.0f} img/s "
            f"| batching gain **{inf['batching_gain_32_vs_1']:.1f}x** |"
        )
    else:
        rows.append(f"| inference | {problem} | | |")

    if (problem := _state(stow)) is None:
        radstream = stow["radstream"]["instances_per_s"]
        rows.append(
            f"| ingest | gateway STOW-RS: {radstream:.1f} inst/s "
            f"| raw PutObject: {stow['raw_put']['instances_per_s']:.1f} inst/s "
            f"| STOW / raw **{stow['efficiency_stow_vs_raw']:.2f}** |"
        )
        orthanc = stow.get("orthanc", {})
        if "radstream_vs_orthanc" in stow:
            rows.append(
                f"| ingest | RadStream: {radstream:.1f} inst/s | Orthanc: {orthanc['instances_per_s']:.1f} inst/s "
                f"| RadStream / Orthanc **{stow['radstream_vs_orthanc']:.2f}** |"
            )
        else:
            reason = str(orthanc.get("skipped", "no figure")).splitlines()[0][:150]
            rows.append(f"| ingest | RadStream: {radstream:.1f} inst/s | Orthanc skipped: {reason} | n/a |")
    else:
        rows.append(f"| ingest | {problem} | | |")

    if (problem := _state(dimse)) is None:
        four = dimse["cstore_4"]["instances_per_s"]
        rows.append(
            f"| dimse | C-STORE, 4 associations: {four:.1f} inst/s | STOW-RS: {dimse['stow']['instances_per_s']:.1f} "
            f"inst/s | C-STORE / STOW-RS **{dimse['cstore_4_vs_stow']:.2f}** |"
        )
        for n in (1, 4):
            if f"cstore_{n}_vs_orthanc" in dimse:
                rows.append(
                    f"| dimse | C-STORE, {n} association(s): {dimse[f'cstore_{n}']['instances_per_s']:.1f} inst/s "
                    f"| Orthanc: {dimse['orthanc'][f'cstore_{n}']['instances_per_s']:.1f} inst/s "
                    f"| RadStream / Orthanc **{dimse[f'cstore_{n}_vs_orthanc']:.2f}** |"
                )
    else:
        rows.append(f"| dimse | {problem} | | |")

    if (problem := _state(pipe)) is None:
        rates = pipe["rates"]
        last = rates[-1] if rates else {}
        offered = ", ".join(f"{r['rate_per_s']:g}" for r in rates)
        sustained = pipe["max_sustained_rate_p95_under_1s"]
        best = "none of the offered rates" if sustained is None else f"{sustained:g} studies/s"
        rows.append(
            f"| pipeline | highest rate with p95 < 1 s and all completed: **{best}** "
            f"| offered {offered} studies/s "
            f"| p95 at {_num(last.get('rate_per_s'), 'g')}/s: {_num(last.get('p95_ms'), '.0f', ' ms')} |"
        )
    else:
        rows.append(f"| pipeline | {problem} | | |")

    if (problem := _state(mem)) is None:
        rows.append(
            f"| memory | gateway peak VmHWM: {mem['gateway_vm_hwm_peak_mb']:.0f} MiB "
            f"(before: {mem['gateway_vm_hwm_before_mb']:.0f} MiB) | request: {mem['request_mb']:.0f} MiB "
            f"| growth / request **{_num(mem.get('growth_vs_request'), '.3f')}**; peak vs {mem['target_peak_mb']} MiB "
            f"target **{mem['gateway_vm_hwm_peak_mb'] / mem['target_peak_mb']:.2f}** |"
        )
    else:
        rows.append(f"| memory | {problem} | | |")
    return rows


def _section_table(name: str, data: dict[str, Any]) -> str:
    """The section module's own ``markdown`` table; imported here, so one broken module costs only its table."""
    try:
        module = importlib.import_module(MODULES[name])
        render: Callable[[dict[str, Any]], str] = module.markdown
        return render(data)
    except Exception as exc:  # a module's table must not cost the report
        slim = {k: v for k, v in data.items() if k not in ("rates",)}
        return f"(table unavailable: {type(exc).__name__}: {exc})\n\n```json\n{json.dumps(slim, indent=2)[:4000]}\n```"


def write_report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# RadStream benchmark",
        "",
        f"- date: {results['started_at']} (UTC), took {_num(results.get('duration_s'), '.0f', ' s')}",
        f"- command: `{results['command']}` (mode: {results['mode']})",
        f"- machine: {m['cpu_model']}, {m['cpus']} cores, {_num(m['ram_gib'], '.1f', ' GiB')} RAM, "
        f"Python {m['python']}, {m['platform']}; load average before: {m['load_average_before']:.2f}",
        "- every measurement runs next to its reference, in the same run, on this machine; all numbers are in "
        "`results.json`",
        "",
        "## Summary",
        "",
        "| section | measurement | reference | ratio |",
        "|---|---|---|---|",
        *summary_rows(results),
        "",
    ]
    failed = [s for s in TITLES if "error" in results.get(s, {})]
    if failed:
        lines += [f"**Failed sections: {', '.join(failed)}** (details below; the other sections ran).", ""]
    for name, title in TITLES.items():
        data = results.get(name, {})
        lines += [f"## {title}", ""]
        seconds = results.get("section_seconds", {}).get(name)
        if "error" in data:
            lines += [f"**This section failed**: `{data['error']}`", "", "```", data.get("traceback", "")[-3000:]]
            lines += ["```", ""]
        elif "skipped" in data:
            lines += [f"Not run: {data['skipped']}.", ""]
        else:
            lines += [_section_table(name, data), ""]
            if seconds is not None:
                lines += [f"Section took {seconds:.0f} s.", ""]
        for figure in FIGURES.get(name, []):
            problem = results.get("plot_problems", {}).get(figure)
            lines += [f"![{figure}]({figure})" + (f" (placeholder: {problem})" if problem else ""), ""]
        lines += ["What limits these numbers:", "", *[f"- {item}" for item in limits(name, m["cpus"])], ""]
    return "\n".join(lines)
