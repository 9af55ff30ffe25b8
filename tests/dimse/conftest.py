"""A real DIMSE listener process (``radstream dimse``) on loopback, on the session's emulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.stack import child_env, dimse_process_spec
from infra.local.supervisor import Supervisor
from radstream.settings import Settings
from tests.conftest import API_KEYS, free_port

PEERS = "alpha:MODALITY_A,beta:MODALITY_B,alpha:ONLY_LOCAL@127.0.0.1,alpha:ELSEWHERE@192.0.2.1"


@dataclasses.dataclass
class Listener:
    settings: Settings
    pid: int
    supervisor: Supervisor

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.dimse_host, self.settings.dimse_port


def start_listener(settings: Settings, **overrides: object) -> Listener:
    values = {"dimse_port": free_port(), "dimse_metrics_port": free_port(), "dimse_flush_quiet_s": 1.0, **overrides}
    own = settings.model_copy(update=values)
    supervisor = Supervisor()
    try:
        proc = supervisor.start(dimse_process_spec(own, child_env(own, API_KEYS)))
    except BaseException:
        supervisor.stop()
        raise
    return Listener(own, proc.pid, supervisor)


@pytest.fixture(scope="module")
def listener(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    state: Path = tmp_path_factory.mktemp("dimse")
    running = start_listener(settings, dimse_peers=PEERS, state_dir=state)
    yield running
    running.supervisor.stop()
