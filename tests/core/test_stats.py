"""`radstream stats`: the Athena queries of infra/athena/ on DuckDB over data-lake objects as Firehose
writes them (JSON lines, gzip in production), and the same queries deployed as Athena named queries."""

from __future__ import annotations

import gzip
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from radstream.stats import QueryResult, athena_queries, run_queries
from radstream.telemetry import TelemetryEvent
from tests.deploy.conftest import TEMPLATE, load_cfn

START = datetime(2026, 11, 26, 23, 58, 30, tzinfo=UTC)  # crosses midnight


def _lines(events: list[TelemetryEvent]) -> bytes:
    return b"".join((json.dumps(e.record(), separators=(",", ":")) + "\n").encode() for e in events)


def _lake(folder: Path) -> None:
    """20 studies: 15 with results, 3 no model applied to, 2 failed; 10 inference events of batch 4 and 8."""
    events: list[TelemetryEvent] = []
    for i in range(20):
        ts, study = START + timedelta(seconds=6 * i), f"1.2.3.{i}"
        events.append(TelemetryEvent(stage="stow", tenant="a", study_uid=study, ts=ts, duration_ms=10.0 + i))
        if i < 15:
            events.append(TelemetryEvent(stage="end_to_end", tenant="a", study_uid=study, ts=ts, duration_ms=100.0 + i))
        elif i < 18:
            events.append(
                TelemetryEvent(
                    stage="end_to_end", tenant="a", study_uid=study, ts=ts, duration_ms=50.0, outcome="no_model"
                )
            )
        else:
            events.append(
                TelemetryEvent(
                    stage="failed", tenant="a", study_uid=study, ts=ts, outcome="failed", reason="DecodeFailed"
                )
            )
        if i < 10:
            events.append(
                TelemetryEvent(
                    stage="inference", tenant="a", study_uid=study, ts=ts, duration_ms=5.0, batch_size=4 if i < 6 else 8,
                    queue_wait_ms=float(i), instances=2,
                )
            )  # fmt: skip
    half = len(events) // 2
    (folder / "part-000000.json.gz").write_bytes(gzip.compress(_lines(events[:half])))  # as Firehose delivers
    newer = {**events[0].record(), "schema_version": "2", "stage": "end_to_end", "duration_ms": 1e9, "added": 1}
    (folder / "part-000001.json").write_bytes(
        _lines(events[half:])
        + b'{"schema_version":"1","stage":"end_to_end","dur\n'
        + (json.dumps(newer) + "\n").encode()
    )


def _by_name(results: list[QueryResult]) -> dict[str, list[dict[str, object]]]:
    return {r.name: [dict(zip(r.columns, row, strict=True)) for row in r.rows] for r in results}


def test_the_queries_on_a_lake_with_gzip_a_malformed_line_and_a_newer_schema(tmp_path: Path) -> None:
    _lake(tmp_path)
    results = _by_name(run_queries(tmp_path))

    latency = {(row["stage"], row["outcome"]): row for row in results["stage_latency"]}
    assert set(latency) == {("stow", "ok"), ("end_to_end", "ok"), ("end_to_end", "no_model"), ("inference", "ok")}
    end_to_end = latency[("end_to_end", "ok")]
    assert end_to_end["events"] == 15  # not the malformed line, not the version-2 event
    assert math.isclose(float(end_to_end["p50_ms"]), 107.0)
    assert float(end_to_end["p50_ms"]) <= float(end_to_end["p95_ms"]) <= float(end_to_end["p99_ms"]) <= 114.0
    assert latency[("end_to_end", "no_model")]["events"] == 3

    (failures,) = results["error_rate_by_reason"]
    assert failures["reason"] == "DecodeFailed" and failures["failures"] == 2
    assert math.isclose(float(failures["error_rate"]), 2 / 20)

    minutes = results["throughput_per_minute"]
    assert sum(int(r["studies_completed"]) for r in minutes) == 18
    assert sum(int(r["images_inferred"]) for r in minutes) == 20
    assert len(minutes) == 3  # 23:58, 23:59, 00:00: the day boundary is only a minute like any other

    batches = {row["batch_size"]: row for row in results["batch_size_distribution"]}
    assert {size: row["studies"] for size, row in batches.items()} == {4: 6, 8: 4}


def test_an_empty_lake_has_no_results(tmp_path: Path) -> None:
    assert run_queries(tmp_path) == []


def test_the_stack_deploys_each_query_as_a_named_query_word_for_word() -> None:
    template = load_cfn(TEMPLATE)
    named = {
        r["Properties"]["Name"]["Fn::Sub"]: r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Athena::NamedQuery"
    }
    files = athena_queries()
    assert set(named) == {f"${{ProjectName}}-{stem.replace('_', '-')}" for stem in files}
    for stem, sql in files.items():
        query = named[f"${{ProjectName}}-{stem.replace('_', '-')}"]
        assert query["QueryString"] == sql, stem
        assert query["Database"] == {"Ref": "TelemetryDatabase"}
        assert query["WorkGroup"] == {"Ref": "AnalyticsWorkGroup"}
        assert "FROM telemetry" in sql and "schema_version = '1'" in sql
    table = template["Resources"]["TelemetryTable"]["Properties"]["TableInput"]["Name"]
    assert table == "telemetry"
