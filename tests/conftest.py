"""Shared fixtures: a real moto server and a real gateway process, both on loopback with free ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra.local.emulator.process import emulator_process_spec
from infra.local.provision import provision
from infra.local.stack import child_env, gateway_process_spec
from infra.local.supervisor import Supervisor
from radstream.settings import Settings

KEY_ALPHA = "alpha-key-0123456789abcdefghij"
KEY_BETA = "beta-key-0123456789abcdefghijk"
API_KEYS = f"alpha:{KEY_ALPHA},beta:{KEY_BETA}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Emulator:
    url: str
    supervisor: Supervisor

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="radstream",
            aws_secret_access_key="radstream",
        )


@dataclass
class Gateway:
    url: str
    pid: int
    settings: Settings
    supervisor: Supervisor

    def auth(self, key: str = KEY_ALPHA) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def start_emulator(state_dir: Path) -> Emulator:
    url = f"http://127.0.0.1:{free_port()}"
    supervisor = Supervisor()
    try:
        supervisor.start(emulator_process_spec(Settings(aws_endpoint_url=url, state_dir=state_dir)))
    except BaseException:  # not ready: end what was started, then fail
        supervisor.stop()
        raise
    return Emulator(url=url, supervisor=supervisor)


def start_gateway(settings: Settings) -> Gateway:
    supervisor = Supervisor()
    try:
        proc = supervisor.start(gateway_process_spec(settings, child_env(settings, API_KEYS)))
    except BaseException:  # not ready: end what was started, then fail
        supervisor.stop()
        raise
    return Gateway(f"http://127.0.0.1:{settings.http_port}", proc.pid, settings, supervisor)


def make_settings(endpoint: str, state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "aws_endpoint_url": endpoint,
        "api_keys": API_KEYS,
        "http_port": free_port(),
        "state_dir": state_dir,
        "api_key_file": state_dir / "api-key",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("radstream-state")


@pytest.fixture(scope="session")
def emulator(state_dir: Path) -> Iterator[Emulator]:
    emu = start_emulator(state_dir)
    yield emu
    emu.supervisor.stop()


@pytest.fixture(scope="session")
async def settings(emulator: Emulator, state_dir: Path) -> Settings:
    s = make_settings(emulator.url, state_dir)
    await provision(s, with_pipeline=False)
    return s


@pytest.fixture(scope="session")
def gateway(settings: Settings) -> Iterator[Gateway]:
    gw = start_gateway(settings)
    yield gw
    gw.supervisor.stop()
