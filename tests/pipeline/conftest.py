"""The whole embedded stack for pipeline tests: emulator (with its local gaps), Triton, gateway, worker.

Each process is started with the same ProcessSpecs `radstream up` uses, on free loopback ports, with short
timeouts so failure paths finish in seconds. Every process logs to a file the PHI test scans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from infra.local.emulator.process import emulator_process_spec
from infra.local.processes import ProcessSpec
from infra.local.provision import provision
from infra.local.stack import child_env, isolated_settings, process_specs
from infra.local.supervisor import Supervisor
from radstream import keys
from radstream.manifest import Manifest, ManifestInstance
from radstream.settings import Settings
from radstream.status import utcnow
from tests.conftest import API_KEYS, KEY_ALPHA

PIPELINE_TIMEOUT_S = 90


@dataclass
class Stack:
    settings: Settings
    url: str
    logs: Path
    supervisors: dict[str, Supervisor] = field(default_factory=dict)
    specs: dict[str, ProcessSpec] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.settings.aws_endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="radstream",
            aws_secret_access_key="radstream",
        )

    def write_manifest(
        self, study: str, series: str, request_id: str, *, sop: str, sop_class_uid: str, size: int, sha256: str
    ) -> str:
        """Write, straight to the bucket, the manifest of one tenant-alpha CT instance; returns its key.
        Nothing checks it against the store: tests use it for manifests the gateway would never write."""
        manifest = Manifest(
            request_id=request_id,
            tenant="alpha",
            study_instance_uid=study,
            received_at=utcnow(),
            instances=[
                ManifestInstance(
                    key=keys.instance_key("alpha", study, series, sop),
                    sop_class_uid=sop_class_uid,
                    sop_instance_uid=sop,
                    series_instance_uid=series,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    modality="CT",
                    size=size,
                    sha256=sha256,
                )
            ],
        )
        key = keys.manifest_key("alpha", study, request_id)
        self.client("s3").put_object(
            Bucket=self.settings.images_bucket, Key=key, Body=manifest.model_dump_json().encode()
        )
        return key

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY_ALPHA}"}

    def start(self, name: str) -> int:
        supervisor = Supervisor()
        proc = supervisor.start(self.specs[name])
        self.supervisors[name] = supervisor
        return proc.pid

    def pid(self, name: str) -> int:
        return self.supervisors[name].children[0][1].pid

    def stop(self, name: str) -> None:
        self.supervisors.pop(name).stop()

    @contextlib.contextmanager
    def restarted(self, name: str, **env: str) -> Iterator[None]:
        """Restart ``name`` with ``env`` added to its environment; restart it as it was afterwards."""
        original = self.specs[name]
        self.stop(name)
        self.specs[name] = dataclasses.replace(original, env={**original.env, **env})
        try:
            self.start(name)
            yield
        finally:
            self.stop(name)
            self.specs[name] = original
            self.start(name)

    def kill(self, name: str) -> None:
        """SIGKILL, as a crashed node would: no clean-up runs."""
        supervisor = self.supervisors.pop(name)
        _, proc = supervisor.children[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        supervisor.children.clear()

    def status(self, study: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/studies/{study}", headers=self.auth)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, study: str, states: tuple[str, ...], timeout_s: float = PIPELINE_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.status(study)
            if body["status"] in states:
                return body
            assert time.monotonic() < deadline, f"study still {body['status']} after {timeout_s} s: {body}"
            time.sleep(0.2)

    def executions(self) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        arn = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"])
        out: list[dict[str, Any]] = sfn.list_executions(stateMachineArn=arn)["executions"]
        return out

    def telemetry(self) -> list[dict[str, Any]]:
        s3 = self.client("s3")
        records = []
        for obj in s3.list_objects_v2(Bucket=self.settings.datalake_bucket, Prefix="telemetry/").get("Contents", []):
            body = s3.get_object(Bucket=self.settings.datalake_bucket, Key=obj["Key"])["Body"].read()
            records += [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        return records


def _logged(spec: ProcessSpec, logs: Path) -> ProcessSpec:
    return dataclasses.replace(spec, log_path=logs / f"{spec.name}.log")


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    state = tmp_path_factory.mktemp("pipeline")
    logs = state / "logs"
    settings = isolated_settings(
        state,
        API_KEYS,
        triton_request_timeout_s=3.0,
        worker_visibility_timeout_s=6,
        worker_outage_budget_s=12,
        worker_server_fault_retries=5,
        worker_poll_wait_s=1,
        pipeline_retry_scale=0.02,
        reconcile_after_s=8,
        reconcile_interval_s=1,
    )
    env = child_env(settings, API_KEYS)
    stack = Stack(settings=settings, url=f"http://127.0.0.1:{settings.http_port}", logs=logs)
    for spec in (emulator_process_spec(settings), *process_specs(settings, env)):
        stack.specs[spec.name] = _logged(spec, logs)
    stack.start("aws-emulator")
    await provision(settings)
    await provision(settings)  # idempotent: a second start does not fail
    for name in list(stack.specs)[1:]:
        stack.start(name)
    yield stack
    for name in reversed(list(stack.supervisors)):
        stack.stop(name)


@pytest.fixture
def triton_paused(stack: Stack) -> Iterator[int]:
    """Triton stops answering (SIGSTOP) for the duration of a test; SIGCONT afterwards in any case."""
    pid = stack.pid("triton")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)
