"""schemathesis against the running gateway's /openapi.json: no 5xx, no undocumented status code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEY_ALPHA, Gateway

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_contract_holds(gateway: Gateway) -> None:
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{gateway.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {KEY_ALPHA}",
            "-c",
            checks,
            "-n",
            "40",
            "--generation-deterministic",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.gateway.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected is not None
    assert tested is not None
    assert selected.group(1) == selected.group(2) == tested.group(1)  # every operation was exercised
    assert " passed" in result.stdout


def test_every_route_documents_its_errors(gateway: Gateway) -> None:
    import httpx

    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    stow = spec["paths"]["/dicomweb/studies"]["post"]["responses"]
    assert {"200", "202", "400", "401", "409", "413", "415", "503"} <= set(stow)
    assert "example" in stow["200"]["content"]["application/dicom+json"]
    wado = spec["paths"]["/dicomweb/studies/{study}/series/{series}/instances/{instance}"]["get"]["responses"]
    assert {"200", "401", "404", "406"} <= set(wado)
    assert {"401", "404"} <= set(spec["paths"]["/v1/studies/{study}"]["get"]["responses"])
