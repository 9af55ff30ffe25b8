"""``radstream up``: the embedded stack on one machine.

Order: AWS emulator -> provisioning (infra/) -> gateway (-> Triton -> worker). Each process is a
:class:`ProcessSpec`; adding one is one line in :func:`process_specs`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from infra.local.emulator.process import emulator_process_spec, http_ok
from infra.local.errors import Interrupted, StackError
from infra.local.lambda_runtime import lambda_runtime_process_spec
from infra.local.processes import SINGLE_THREADED_MATH, ProcessSpec, free_port
from infra.local.provision import provision
from infra.local.supervisor import StopFlag, Supervisor
from infra.local.triton import triton_process_spec
from radstream.settings import Settings, settings_env

log = logging.getLogger("radstream.stack")
LOCAL_TENANT = "local"


def ensure_api_keys(settings: Settings) -> str:
    """RADSTREAM_API_KEYS if set (checked now, not when the gateway starts last); otherwise a key generated
    once and kept in ``api_key_file``."""
    if settings.api_keys is not None:
        try:
            settings.tenant_keys()
        except ValueError as exc:
            raise StackError(str(exc)) from None
        return settings.api_keys.get_secret_value()
    path: Path = settings.api_key_file
    if path.exists():
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    return f"{LOCAL_TENANT}:{key}"


def child_env(settings: Settings, api_keys: str) -> dict[str, str]:
    """This process's environment plus every setting, so children see the same configuration."""
    env = {**os.environ, **settings_env(settings)}
    env["RADSTREAM_API_KEYS"] = api_keys
    return env


def gateway_process_spec(settings: Settings, env: dict[str, str]) -> ProcessSpec:
    argv = [sys.executable, "-m", "uvicorn", "gateway.main:create_app", "--factory"]
    argv += ["--host", settings.http_host, "--port", str(settings.http_port), "--no-access-log"]
    argv += ["--timeout-graceful-shutdown", "20"]
    return ProcessSpec(
        name="gateway",
        argv=argv,
        env=env,
        ready=lambda: http_ok(f"http://{settings.http_host}:{settings.http_port}/readyz"),
        ready_timeout_s=30.0,
    )


def worker_process_spec(settings: Settings, env: dict[str, str]) -> ProcessSpec:
    return ProcessSpec(
        name="worker", argv=[sys.executable, "-m", "cli.main", "worker"], env={**env, **SINGLE_THREADED_MATH}
    )


def tcp_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when something accepts TCP connections on host:port; never raises."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def dimse_process_spec(settings: Settings, env: dict[str, str]) -> ProcessSpec:
    return ProcessSpec(
        name="dimse",
        argv=[sys.executable, "-m", "cli.main", "dimse"],
        env=env,
        ready=lambda: tcp_open(settings.dimse_host, settings.dimse_port),
        ready_timeout_s=30.0,
        log_path=settings.state_dir / "logs" / "dimse.log",
    )


def scheduler_process_spec(settings: Settings, env: dict[str, str]) -> ProcessSpec:
    """EventBridge Scheduler's part: the reconciler, every ``reconcile_interval_s`` (infra/local/scheduler.py)."""
    return ProcessSpec(name="scheduler", argv=[sys.executable, "-m", "infra.local.scheduler"], env=env)


def process_specs(settings: Settings, env: dict[str, str]) -> list[ProcessSpec]:
    """Every process after the emulator and provisioning, in start order."""
    return [
        lambda_runtime_process_spec(settings),
        triton_process_spec(settings),
        gateway_process_spec(settings, env),
        dimse_process_spec(settings, env),
        worker_process_spec(settings, env),
        scheduler_process_spec(settings, env),
    ]


LOCAL_EXPORT_RETRY_BUDGET_S = 300.0


def isolated_settings(state_dir: Path, api_keys: str, **overrides: object) -> Settings:
    """Settings for a complete stack on free loopback ports with its own state folder, so several stacks
    (tests, benchmarks, `radstream up`) can run side by side."""
    values: dict[str, object] = {
        "aws_endpoint_url": f"http://127.0.0.1:{free_port()}",
        "api_keys": api_keys,
        "http_port": free_port(),
        "state_dir": state_dir,
        "api_key_file": state_dir / "api-key",
        "triton_grpc_url": f"127.0.0.1:{free_port()}",
        "triton_http_port": free_port(),
        "triton_metrics_port": free_port(),
        "lambda_runtime_port": free_port(),
        "dimse_port": free_port(),
        "dimse_metrics_port": free_port(),
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def listening_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """(what, setting, port) of every port the stack listens on, on 127.0.0.1."""
    emulator = urlsplit(settings.aws_endpoint_url or "")
    triton_grpc = settings.triton_grpc_url.rpartition(":")[2]
    ports = [
        ("the AWS emulator", "RADSTREAM_AWS_ENDPOINT_URL", emulator.port),
        ("the Lambda runtime", "RADSTREAM_LAMBDA_RUNTIME_PORT", settings.lambda_runtime_port),
        ("Triton gRPC", "RADSTREAM_TRITON_GRPC_URL", int(triton_grpc) if triton_grpc.isdigit() else None),
        ("Triton HTTP", "RADSTREAM_TRITON_HTTP_PORT", settings.triton_http_port),
        ("Triton metrics", "RADSTREAM_TRITON_METRICS_PORT", settings.triton_metrics_port),
        ("the gateway", "RADSTREAM_HTTP_PORT", settings.http_port),
        ("the DIMSE listener", "RADSTREAM_DIMSE_PORT", settings.dimse_port),
        ("the DIMSE listener's metrics", "RADSTREAM_DIMSE_METRICS_PORT", settings.dimse_metrics_port),
    ]
    out: list[tuple[str, str, int]] = []
    for what, setting, port in ports:
        if port is None:
            raise StackError(f"{setting} names no port")
        out.append((what, setting, port))
    return out


def check_ports_free(settings: Settings) -> None:
    """StackError naming the first port that another program holds (or that two settings share)."""
    seen: dict[int, str] = {}
    for what, setting, port in listening_ports(settings):
        if port in seen:
            raise StackError(f"{setting} and {seen[port]} both name port {port}")
        seen[port] = setting
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves bind
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                raise StackError(
                    f"port {port} ({what}, {setting}) is in use by another program: is RadStream already "
                    f"running? Stop it, or choose another port with {setting}"
                ) from None


def lock_state_dir(settings: Settings) -> IO[str]:
    """Hold ``state_dir/up.lock`` while this stack runs (released when the process ends, however it ends)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / "up.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StackError(
            f"RadStream is already running with the state folder {settings.state_dir} (pid {holder}); stop it "
            "first, or give this one its own RADSTREAM_STATE_DIR and ports"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def local_defaults(settings: Settings) -> Settings:
    """What the local stack sets differently where the environment says nothing: an export destination on
    a developer's machine is retried for LOCAL_EXPORT_RETRY_BUDGET_S, not production's hour."""
    if "export_retry_budget_s" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"export_retry_budget_s": LOCAL_EXPORT_RETRY_BUDGET_S})


def run(settings: Settings) -> int:
    """The whole stack in the foreground. StackError or ChildFailed when it cannot start; 0 after a stop
    signal, 1 when a child died."""
    settings = local_defaults(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api_keys = ensure_api_keys(settings)
    try:
        lock = lock_state_dir(settings)
    except OSError as exc:
        raise StackError(f"the state folder {settings.state_dir} cannot be used: {exc.strerror or exc}") from None
    check_ports_free(settings)
    env = child_env(settings, api_keys)
    stop = StopFlag()
    stop.install()
    supervisor = Supervisor()
    try:
        supervisor.start(emulator_process_spec(settings), stop)
        asyncio.run(provision(settings))
        for spec in process_specs(settings, env):
            if stop():
                return 0
            supervisor.start(spec, stop)
        base = f"http://{settings.http_host}:{settings.http_port}"
        where = settings.api_key_file if settings.api_keys is None else "RADSTREAM_API_KEYS"
        print(
            f"\nRadStream is up.\n  API docs  {base}/docs\n"
            f"  DICOMweb  {base}/dicomweb (STOW-RS: POST {base}/dicomweb/studies)\n"
            f"  DIMSE     {settings.dimse_ae_title}@{settings.dimse_host}:{settings.dimse_port} (C-STORE, C-ECHO)\n"
            f"  AWS emulator {settings.aws_endpoint_url}\n  API key   in {where}\n"
            f"Try: radstream send PATH --url {base}\n"
            f"  or: storescu -aec {settings.dimse_ae_title} +sd +r {settings.dimse_host} {settings.dimse_port} FOLDER\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        if settings.api_keys is None:
            print(f"API key: {api_keys.partition(':')[2]}", flush=True)
        return supervisor.wait(stop)
    except Interrupted:
        return 0
    finally:
        supervisor.stop()
        lock.close()
