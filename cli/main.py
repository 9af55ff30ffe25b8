"""The ``radstream`` command: up | send | status | results | infer | stats | bench | worker | dimse.

The top of the layers: it may import every package (the local stack, the worker, the load tests); nothing
imports it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from radstream.settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RadStream: DICOMweb in, AI results out.")
console = Console()

UrlOpt = Annotated[str | None, typer.Option("--url", help="gateway base URL (default from settings)")]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="RADSTREAM_API_KEY", help="API key (default: .radstream/api-key)")
]


def _url(url: str | None) -> str:
    return (url or get_settings().base_url).rstrip("/")


def _api_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    settings = get_settings()
    if settings.api_keys is not None:
        first = settings.api_keys.get_secret_value().split(",")[0]
        return first.partition(":")[2]
    if settings.api_key_file.exists():
        return settings.api_key_file.read_text().strip()
    raise typer.BadParameter("no API key: pass --api-key, set RADSTREAM_API_KEY, or run `radstream up` first")


def _settings() -> Settings:
    """The settings from the environment; a clear line per invalid RADSTREAM_* variable, no traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RADSTREAM_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        raise _fail(f"invalid configuration: {problems}") from None


@app.command()
def up() -> None:
    """Run the whole embedded stack in the foreground (Ctrl-C stops every child)."""
    from infra.local.errors import ChildFailed, StackError
    from infra.local.stack import run

    settings = _settings()
    try:
        code = run(settings)
    except (StackError, ChildFailed) as exc:
        console.print(Text("radstream up: ", style="red") + Text(str(exc)), soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    except ValueError as exc:  # a setting that parses but cannot be used (a port that is not a number)
        raise _fail(f"radstream up: invalid configuration: {exc}") from None
    raise typer.Exit(code)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders", exists=True)],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    batch: Annotated[int, typer.Option(min=1, help="instances per STOW request")] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 4,
    retries: Annotated[
        int, typer.Option(min=0, help="times a batch is sent again after 503/429 (Retry-After) or a lost connection")
    ] = 3,
) -> None:
    """Upload DICOM files over STOW-RS, grouped by study.

    Exits 0 when every DICOM file found was stored, 1 when any failed or could not be read, or when no
    DICOM file was found."""
    from cli.send import send as do_send

    key = _api_key(api_key)
    with Progress(
        TextColumn("[bold]STOW-RS"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("send", total=None)
        done = {"n": 0}

        def advance(n: int, _bytes: int) -> None:
            done["n"] += n
            progress.update(task, completed=done["n"])

        report = asyncio.run(
            do_send(
                paths,
                url=_url(url),
                api_key=key,
                batch=batch,
                concurrency=concurrency,
                retries=retries,
                on_progress=advance,
                on_total=lambda total: progress.update(task, total=total),
            )
        )
    table = Table(title="STOW-RS summary")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_row("DICOM instances found", str(report.found))
    table.add_row("stored", str(report.stored))
    table.add_row("  with warnings", str(len(report.warnings)))
    table.add_row("failed", str(report.failed))
    table.add_row("unreadable files or folders", str(len(report.unreadable)))
    table.add_row("not DICOM (skipped)", str(len(report.skipped)))
    console.print(table)
    if report.retries:
        console.print(f"requests sent again (server busy or connection lost): {report.retries}")
    for label, style, lines in (
        ("warning", "yellow", report.warnings),
        ("failed", "red", report.failures),
        ("unreadable", "red", report.unreadable),
        ("skipped", "dim", report.skipped),
    ):
        for line in lines:  # file names and server text are printed as they are, never as markup
            console.print(Text(label, style=style) + Text(f" {line}"), soft_wrap=True, highlight=False)
    if report.found == 0 and report.ok:
        console.print(f"[red]no DICOM files found under {', '.join(map(str, paths))}[/]")
        raise typer.Exit(1)
    raise typer.Exit(0 if report.ok else 1)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{message}[/]", soft_wrap=True)
    return typer.Exit(1)


def _get(
    path: str, url: str | None, api_key: str | None, *, method: str = "GET", body: dict[str, Any] | None = None
) -> httpx.Response:
    base = _url(url)
    try:
        response = httpx.request(
            method,
            f"{base}{path}",
            headers={"Authorization": f"Bearer {_api_key(api_key)}"},
            json=body,
            timeout=30.0,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the gateway at {base}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 400:
        console.print(f"[red]HTTP {response.status_code}[/] {response.text}", markup=True, soft_wrap=True)
        raise typer.Exit(1)
    return response


def _print_json(response: httpx.Response) -> None:
    try:
        json.loads(response.text)
    except ValueError:
        raise _fail(f"the gateway's answer is not JSON: {response.text[:300]!r}") from None
    console.print_json(response.text)


@app.command()
def status(study_uid: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Print a study's processing status."""
    _print_json(_get(f"/v1/studies/{study_uid}", url, api_key))


@app.command()
def reprocess(study_uid: str, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Run the pipeline over a study again, inferring every instance (after a failure, or a new model)."""
    _print_json(_get(f"/v1/studies/{study_uid}/reprocess", url, api_key, method="POST"))


@app.command()
def export(
    study_uid: str,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="one destination's name (default: every one)")] = None,
) -> None:
    """Send a study's results (SR and SEG) to its export destinations again; `radstream status` follows them."""
    body = None if to is None else {"destination": to}
    _print_json(_get(f"/v1/studies/{study_uid}/exports", url, api_key, method="POST", body=body))


@app.command()
def results(
    study_uid: str,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    sr: Annotated[Path | None, typer.Option(help="also save the DICOM SR to this file")] = None,
) -> None:
    """Print a study's results (JSON); optionally save its DICOM SR."""
    _print_json(_get(f"/v1/studies/{study_uid}/results", url, api_key))
    if sr is not None:
        content = _get(f"/v1/studies/{study_uid}/results/sr", url, api_key).content
        try:
            sr.write_bytes(content)
        except OSError as exc:
            raise _fail(f"cannot write the DICOM SR to {sr}: {exc.strerror or exc}") from None
        console.print(f"DICOM SR written to {sr}")


@app.command()
def stats() -> None:
    """Latency percentiles per stage, throughput, errors and batch sizes from the telemetry data lake."""
    from radstream.stats import local_stats

    settings = get_settings()
    try:
        objects, results = asyncio.run(local_stats(settings))
    except (BotoCoreError, ClientError) as exc:
        raise _fail(
            f"cannot read the data lake at {settings.aws_endpoint_url or 'AWS'} ({exc}); is `radstream up` running?"
        ) from None
    if not results:
        console.print("no telemetry in the data lake yet (Firehose delivers about once a second locally)")
        raise typer.Exit(1)
    console.print(f"{objects} data lake objects")
    for result in results:
        table = Table(title=result.name.replace("_", " "))
        for column in result.columns:
            table.add_column(column, justify="left" if column in ("stage", "reason", "minute") else "right")
        for row in result.rows:
            table.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row])
        console.print(table)


@app.command()
def worker() -> None:
    """Run the inference worker (consumes the inference queue until SIGTERM)."""
    import logging

    import uvloop

    from worker.inference.main import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # uvloop, as uvicorn uses for the gateway: the worker is mostly event loop and HTTP client work
    raise typer.Exit(uvloop.run(run_worker(get_settings())))


@app.command()
def dimse() -> None:
    """Run the DIMSE listener (C-STORE SCP) until SIGTERM."""
    import logging

    import uvloop

    from dimse.errors import PeerConfigError
    from dimse.main import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        raise typer.Exit(uvloop.run(serve(_settings())))
    except PeerConfigError as exc:
        raise _fail(f"radstream dimse: {exc.detail}") from None


@app.command()
def infer(
    files: Annotated[list[Path], typer.Argument(help="DICOM files")],
    triton_url: Annotated[str | None, typer.Option(help="Triton gRPC host:port")] = None,
) -> None:
    """Run local DICOM files through preprocessing, the batcher and Triton; one JSON line per file."""
    from cli.infer import infer_files

    settings = get_settings()
    raise typer.Exit(infer_files(files, triton_url or settings.triton_grpc_url, settings))


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="shorter measurements, smaller requests")] = False,
    out: Annotated[Path, typer.Option(help="folder for report.md, results.json and the PNGs")] = Path("bench-out"),
    cpus: Annotated[
        int | None, typer.Option(help="run everything (load generators and servers) on the first N allowed CPUs")
    ] = None,
) -> None:
    """Benchmark everything against its reference in one run; writes a report, JSON and plots to --out."""
    import shlex
    import sys

    from loadtest import cpus as cpu_pinning
    from loadtest.harness import run_bench

    if cpus is not None:
        try:
            cpu_pinning.pin(cpus)
        except ValueError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc

    command = "radstream " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    result: dict[str, Any] = run_bench(out, quick=quick, command=command)
    failed = [name for name, value in result.items() if isinstance(value, dict) and "error" in value]
    console.print(f"report: {out / 'report.md'}  ({result['duration_s']:.0f} s)")
    for name in failed:
        console.print(f"[red]{name} failed[/] {result[name]['error']}")
    raise typer.Exit(1 if failed else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
