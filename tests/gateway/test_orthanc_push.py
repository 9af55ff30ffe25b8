"""A real PACS pushes to RadStream: Orthanc sends a study over STOW-RS (its DICOMweb plugin) and over DIMSE
C-STORE (as an SCU, to the DIMSE listener).

Orthanc 1.10 cannot bind to 127.0.0.1 alone, so the emulator, the gateway, the listener and Orthanc all
run in a network namespace of this test that has only ``lo``; every request is made from inside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.emulator.process import emulator_process_spec
from infra.local.processes import ProcessSpec
from infra.local.stack import child_env, dimse_process_spec, gateway_process_spec, isolated_settings
from infra.local.supervisor import Supervisor
from loadtest import synthetic
from loadtest.orthanc import ORTHANC_PLUGIN_CANDIDATES, orthanc_config
from radstream.settings import Settings, settings_env
from tests.conftest import API_KEYS, KEY_ALPHA

ORTHANC_PORT = 8042
ROOT = Path(__file__).resolve().parents[2]


def _ns_run(ns: str, code: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run Python ``code`` inside namespace ``ns``; it prints one JSON value, which is returned."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ns_ready(ns: str, url: str) -> bool:
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=1).close(); print('true')"
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True).returncode == 0


def _in_ns(ns: str, spec: ProcessSpec, url: str) -> ProcessSpec:
    return dataclasses.replace(
        spec, argv=["ip", "netns", "exec", ns, *spec.argv], ready=lambda: _ns_ready(ns, url), ready_timeout_s=60
    )


def _upload_to_orthanc(files: list[str]) -> str:
    """Code that defines ``call`` and ``orthanc``, uploads ``files`` to Orthanc, and leaves ``payload``: the
    study as the body of an Orthanc push job. One line, so that it fits the indentation it is put in."""
    lines = [
        "import json, urllib.request",
        f"orthanc = 'http://127.0.0.1:{ORTHANC_PORT}'",
        "def call(method, url, data=None, headers=None):",
        "    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})",
        "    with urllib.request.urlopen(req, timeout=60) as r:",
        "        return r.status, r.read()",
        f"studies = [json.loads(call('POST', orthanc + '/instances', open(f, 'rb').read())[1])['ParentStudy'] "
        f"for f in {files!r}]",
        "payload = json.dumps({'Resources': [studies[-1]], 'Synchronous': True}).encode()",
    ]
    return f"exec({chr(10).join(lines)!r})"


@dataclasses.dataclass
class PushStack:
    ns: str
    settings: Settings
    work: Path


@pytest.fixture(scope="module")
def push_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushStack]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace (CI runs as root)")
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugin = next((p for p in ORTHANC_PLUGIN_CANDIDATES if p.exists()), None)
    assert Path(binary).exists(), (
        "Orthanc is missing: apt-get install orthanc orthanc-dicomweb (scripts/system-deps.sh)"
    )
    assert plugin is not None, "Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb"
    work = tmp_path_factory.mktemp("orthanc-push")
    ns = f"rstest{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    supervisor = Supervisor()
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        settings = isolated_settings(work, API_KEYS, dimse_peers="alpha:ORTHANC", dimse_flush_quiet_s=1.0)
        base = f"http://127.0.0.1:{settings.http_port}"
        supervisor.start(_in_ns(ns, emulator_process_spec(settings), f"{settings.aws_endpoint_url}/moto-api/data.json"))
        _ns_run(
            ns,
            """
            import asyncio
            from infra.local.provision import provision
            from radstream.settings import Settings
            asyncio.run(provision(Settings(), with_pipeline=False))
            print("true")
            """,
            env=settings_env(settings),
        )
        supervisor.start(_in_ns(ns, gateway_process_spec(settings, child_env(settings, API_KEYS)), f"{base}/healthz"))
        listener = dimse_process_spec(settings, child_env(settings, API_KEYS))
        supervisor.start(_in_ns(ns, listener, f"http://127.0.0.1:{settings.dimse_metrics_port}/metrics"))
        config = orthanc_config(work, ORTHANC_PORT, plugin)
        config["DicomModalities"] = {"radstream": ["RADSTREAM", "127.0.0.1", settings.dimse_port]}
        config["DicomWeb"]["Servers"] = {
            "radstream": {"Url": f"{base}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {KEY_ALPHA}"}}
        }
        (work / "orthanc.json").write_text(json.dumps(config))
        orthanc = ProcessSpec(name="orthanc", argv=[binary, str(work / "orthanc.json")], log_path=work / "orthanc.log")
        supervisor.start(_in_ns(ns, orthanc, f"http://127.0.0.1:{ORTHANC_PORT}/system"))
        yield PushStack(ns=ns, settings=settings, work=work)
    finally:
        supervisor.stop()
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_orthanc_pushes_a_study_over_stow_rs(push_stack: PushStack) -> None:
    uids = synthetic.StudyUids.new()
    files = []
    for i in range(3):
        ds = synthetic.ct_slice(uids, i, rows=128, cols=128)
        path = push_stack.work / f"slice{i}.dcm"
        path.write_bytes(synthetic.to_bytes(ds))
        files.append(str(path))
        if i == 0:
            sop = ds.SOPInstanceUID
    base = f"http://127.0.0.1:{push_stack.settings.http_port}"
    result = _ns_run(
        push_stack.ns,
        f"""
        {_upload_to_orthanc(files)}
        sop = "{sop}"
        status, body = call("POST", orthanc + "/dicom-web/servers/radstream/stow", payload)
        auth = {{"Authorization": "Bearer {KEY_ALPHA}"}}
        _, state = call("GET", "{base}/v1/studies/{uids.study}", headers=auth)
        _, stored = call("GET", "{base}/dicomweb/studies/{uids.study}/series/{uids.series}/instances/" + sop,
                         headers={{**auth, "Accept": "application/dicom"}})
        same = stored == open({files[0]!r}, "rb").read()
        print(json.dumps({{"stow_status": status, "study": json.loads(state), "identical": same}}))
        """,
    )
    assert result["stow_status"] == 200, result
    assert result["study"]["instances"] == 3
    assert result["study"]["status"] == "received"
    assert result["identical"] is True  # what Orthanc sent is what WADO-RS returns


def test_orthanc_pushes_a_study_over_dimse_c_store(push_stack: PushStack) -> None:
    uids = synthetic.StudyUids.new()
    files = []
    for i in range(3):
        path = push_stack.work / f"dimse{i}.dcm"
        path.write_bytes(synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=128, cols=128)))
        files.append(str(path))
    base = f"http://127.0.0.1:{push_stack.settings.http_port}"
    result = _ns_run(
        push_stack.ns,
        f"""
        {_upload_to_orthanc(files)}
        import time
        status, body = call("POST", orthanc + "/modalities/radstream/store", payload)
        auth = {{"Authorization": "Bearer {KEY_ALPHA}"}}
        state = None
        for _ in range(100):  # the association's manifest is written at its release
            try:
                _, raw = call("GET", "{base}/v1/studies/{uids.study}", headers=auth)
                state = json.loads(raw)
                if state["instances"] == 3:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        print(json.dumps({{"store_status": status, "store": json.loads(body), "study": state}}))
        """,
    )
    assert result["store_status"] == 200, result
    assert result["store"]["InstancesCount"] == 3 and result["store"]["FailedInstancesCount"] == 0, result
    assert result["study"]["instances"] == 3
    assert result["study"]["status"] == "received"
