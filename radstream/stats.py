"""``radstream stats``: the Athena named queries of infra/athena/, run with DuckDB on the local data lake.

The emulator's Athena returns no rows, so locally the same SQL files run on DuckDB after two mechanical
rewrites (see infra/athena/README.md). On AWS, run the named queries in the Athena workgroup.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from radstream.aws import config as aws
from radstream.settings import PROJECT_ROOT, Settings

QUERY_DIR = PROJECT_ROOT / "infra" / "athena"
TABLE = "telemetry"
TELEMETRY_PREFIX = "telemetry/"


@dataclass(frozen=True)
class QueryResult:
    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]


def athena_queries() -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(QUERY_DIR.glob("*.sql"))}


def to_duckdb(sql: str) -> str:
    """Athena (Trino) SQL -> DuckDB SQL; the only rewrites, documented in infra/athena/README.md."""
    return re.sub(r"\bapprox_percentile\s*\(", "quantile_cont(", sql)


async def download_datalake(settings: Settings, target: Path) -> int:
    session = aws.session(settings)
    count = 0
    async with session.client("s3", **aws.client_kwargs(settings)) as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=settings.datalake_bucket, Prefix=TELEMETRY_PREFIX):
            for obj in page.get("Contents", []):
                body = await s3.get_object(Bucket=settings.datalake_bucket, Key=obj["Key"])
                data = await body["Body"].read()
                # Firehose compresses with gzip in production (the key keeps no suffix that says so).
                suffix = ".json.gz" if data[:2] == b"\x1f\x8b" else ".json"
                (target / f"part-{count:06d}{suffix}").write_bytes(data)
                count += 1
    return count


def run_queries(folder: Path) -> list[QueryResult]:
    con = duckdb.connect()
    files = sorted(folder.glob("*.json*"))
    if not files:
        return []
    paths = ", ".join(f"'{p}'" for p in files)
    con.execute(
        f"CREATE VIEW {TABLE} AS SELECT * REPLACE (CAST(ts AS TIMESTAMP) AS ts) "  # noqa: S608 - our own file paths
        f"FROM read_json_auto([{paths}], format='newline_delimited', union_by_name=true, ignore_errors=true, "
        "columns={'schema_version':'VARCHAR','event_id':'VARCHAR','ts':'VARCHAR','stage':'VARCHAR',"
        "'tenant':'VARCHAR','study_uid':'VARCHAR','duration_ms':'DOUBLE','batch_size':'INTEGER',"
        "'queue_wait_ms':'DOUBLE','model':'VARCHAR','outcome':'VARCHAR','reason':'VARCHAR','instances':'INTEGER',"
        "'destination':'VARCHAR'})"
    )
    results = []
    for name, sql in athena_queries().items():
        cursor = con.execute(to_duckdb(sql))
        columns = [d[0] for d in cursor.description]
        results.append(QueryResult(name, columns, [tuple(row) for row in cursor.fetchall()]))
    return results


async def local_stats(settings: Settings) -> tuple[int, list[QueryResult]]:
    with tempfile.TemporaryDirectory(prefix="radstream-stats-") as tmp:
        objects = await download_datalake(settings, Path(tmp))
        return objects, run_queries(Path(tmp))
