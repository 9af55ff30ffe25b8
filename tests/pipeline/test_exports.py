"""Results pushed to export destinations by the real local stack: a DIMSE storage SCP (pynetdicom, on
loopback) and a DICOMweb STOW-RS server (the stack's own gateway, as another tenant: a real STOW-RS server
that keeps one copy of an instance sent twice). Each test restarts the Lambda runtime and the gateway with
its destinations (``RADSTREAM_EXPORT_DESTINATIONS``)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

from infra.local.processes import free_port
from loadtest.phantoms import make_phantom
from loadtest.synthetic import set_grayscale_pixels
from tests.conftest import KEY_ALPHA, KEY_BETA
from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import ct_study, send

EXPORT_BUDGET_S = 60  # the retry budget on the test stack: longer than the 30 s outage below


@dataclass
class StorageScp:
    """A C-STORE SCP on 127.0.0.1 that keeps what it received (SOP class, instance, study) and answers
    ``status``."""

    port: int
    ae_title: str = "EXPORTSCP"
    status: int = 0x0000
    received: list[tuple[str, str, str]] = field(default_factory=list)
    _server: Any = None

    def start(self) -> StorageScp:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # as a PACS does: an association to another AE title is rejected
        for context in (Comprehensive3DSRStorage, SegmentationStorage):
            ae.add_supported_context(context)

        def on_store(event: Any) -> int:
            ds = event.dataset
            self.received.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)))
            return self.status

        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


@contextlib.contextmanager
def destinations(stack: Stack, document: list[dict[str, Any]], **env: str) -> Iterator[None]:
    text = json.dumps(document)
    extra = {"RADSTREAM_EXPORT_DESTINATIONS": text, "RADSTREAM_EXPORT_RETRY_BUDGET_S": str(EXPORT_BUDGET_S), **env}
    with stack.restarted("lambda-runtime", **extra), stack.restarted("gateway", RADSTREAM_EXPORT_DESTINATIONS=text):
        yield


def _dimse(name: str, scp: StorageScp | int, ae_title: str = "EXPORTSCP") -> dict[str, Any]:
    port = scp.port if isinstance(scp, StorageScp) else scp
    return {"tenant": "alpha", "name": name, "kind": "dimse", "host": "127.0.0.1", "port": port, "ae_title": ae_title}


def _web(stack: Stack, name: str, key: str = KEY_BETA) -> dict[str, Any]:
    return {
        "tenant": "alpha",
        "name": name,
        "kind": "dicomweb",
        "url": f"{stack.url}/dicomweb",
        "headers": {"Authorization": f"Bearer {key}"},
    }


def wait_exports(stack: Stack, study: str, done: set[str], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
    """The study's exports once every destination in ``done`` is no longer pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        exports = {e["destination"]: e for e in stack.status(study)["exports"]}
        if all(exports.get(name, {}).get("status") in ("sent", "failed") for name in done):
            return exports
        assert time.monotonic() < deadline, f"exports still pending after {timeout_s} s: {exports}"
        time.sleep(0.25)


def lesion_study(n: int) -> tuple[Any, list[pydicom.Dataset]]:
    """A CT study whose slices show a lesion the model finds: its results have a SEG beside the SR."""
    uids, datasets = ct_study(n)
    rng = np.random.default_rng(11)
    for ds in datasets:
        phantom = make_phantom(rng, with_lesion=True, size=int(ds.Rows))
        set_grayscale_pixels(ds, np.clip(np.round(phantom.hu) + 1024, 0, 4095).astype(np.int16), bits_stored=16)
    return uids, datasets


def _result_uids(stack: Stack, study: str) -> set[str]:
    """SOP Instance UIDs of the SR and SEGs of the study's latest results."""
    document = httpx.get(f"{stack.url}/v1/studies/{study}/results", headers=stack.auth).json()
    sr_bytes = httpx.get(f"{stack.url}/v1/studies/{study}/results/sr", headers=stack.auth).content
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    return {str(sr.SOPInstanceUID), *(s["sop_instance_uid"] for s in document["segmentations"])}


def _beta_instances(stack: Stack, study: str) -> int:
    response = httpx.get(f"{stack.url}/v1/studies/{study}", headers={"Authorization": f"Bearer {KEY_BETA}"})
    return int(response.json()["instances"]) if response.status_code == 200 else 0


@pytest.mark.slow
def test_results_reach_a_dimse_and_a_dicomweb_destination_and_a_reexport_stores_no_second_copy(stack: Stack) -> None:
    scp = StorageScp(free_port()).start()
    try:
        with destinations(stack, [_dimse("pacs", scp), _web(stack, "archive")]):
            uids, datasets = lesion_study(2)
            send(stack, datasets)
            assert stack.wait_status(uids.study, ("completed", "failed"))["status"] == "completed"
            exports = wait_exports(stack, uids.study, {"pacs", "archive"})
            assert exports["pacs"]["status"] == "sent" and exports["archive"]["status"] == "sent", exports
            assert exports["pacs"]["attempts"] == 1 and exports["pacs"]["sent_at"] and not exports["pacs"]["last_error"]
            expected = _result_uids(stack, uids.study)
            assert {sop for _, sop, _ in scp.received} == expected
            assert {study for _, _, study in scp.received} == {uids.study}  # in the source study
            assert {cls for cls, _, _ in scp.received} == {Comprehensive3DSRStorage, SegmentationStorage}
            assert _beta_instances(stack, uids.study) == len(expected)
            deadline = time.monotonic() + 15  # one telemetry record per attempt, through Firehose
            while True:
                records = [r for r in stack.telemetry() if r["stage"] == "export" and r["study_uid"] == uids.study]
                if {r["destination"] for r in records} == {"pacs", "archive"}:
                    break
                assert time.monotonic() < deadline, records
                time.sleep(0.5)
            assert {r["outcome"] for r in records} == {"ok"} and all(r["instances"] == len(expected) for r in records)

            # re-export one destination: the same instances again; the STOW-RS server keeps one copy
            response = httpx.post(
                f"{stack.url}/v1/studies/{uids.study}/exports", json={"destination": "archive"}, headers=stack.auth
            )
            assert response.status_code == 202, response.text
            assert response.json()["exports"] == ["archive"]
            again = wait_exports(stack, uids.study, {"archive"})
            assert again["archive"]["status"] == "sent" and again["archive"]["attempts"] == 1
            assert _beta_instances(stack, uids.study) == len(expected)
            assert len(scp.received) == len(expected)  # the DIMSE destination was not asked again

            # the whole set again, by the CLI's route without a body
            response = httpx.post(f"{stack.url}/v1/studies/{uids.study}/exports", headers=stack.auth)
            assert response.status_code == 202 and sorted(response.json()["exports"]) == ["archive", "pacs"]
            deadline = time.monotonic() + 60
            while len(scp.received) < 2 * len(expected):
                assert time.monotonic() < deadline, "the DIMSE destination did not get the re-export"
                time.sleep(0.25)
            assert {sop for _, sop, _ in scp.received} == expected  # the same SOP Instance UIDs
    finally:
        scp.stop()


@pytest.mark.slow
def test_a_destination_down_for_30_s_gets_the_results_after_retries(stack: Stack) -> None:
    port = free_port()
    with destinations(stack, [_dimse("pacs", port)]):
        uids, datasets = ct_study(1)
        send(stack, datasets)
        assert stack.wait_status(uids.study, ("completed", "failed"))["status"] == "completed"
        time.sleep(30)  # nothing listens on the port
        during = {e["destination"]: e for e in stack.status(uids.study)["exports"]}["pacs"]
        assert during["status"] == "pending" and during["attempts"] >= 2, during
        assert "refused" in during["last_error"], during
        scp = StorageScp(port).start()
        try:
            exports = wait_exports(stack, uids.study, {"pacs"}, timeout_s=60)
            assert exports["pacs"]["status"] == "sent", exports
            assert exports["pacs"]["attempts"] > during["attempts"]
            assert {sop for _, sop, _ in scp.received} == _result_uids(stack, uids.study)
            assert len(scp.received) == len({sop for _, sop, _ in scp.received})  # each once
        finally:
            scp.stop()


@pytest.mark.slow
def test_refusals_fail_at_once_and_an_unreachable_destination_is_reported_while_the_others_are_sent(
    stack: Stack,
) -> None:
    good, refusing = StorageScp(free_port()).start(), StorageScp(free_port(), status=0xC000).start()
    try:
        document = [
            _dimse("pacs", good),
            _dimse("refuses", refusing),
            _web(stack, "bad-key", key="not-a-key-of-this-gateway"),
            _dimse("unreachable", free_port()),
            _dimse("wrong-ae", good, ae_title="NOSUCHAE"),
        ]
        with destinations(stack, document, RADSTREAM_EXPORT_RETRY_BUDGET_S="8"):
            uids, datasets = ct_study(1)
            send(stack, datasets)
            assert stack.wait_status(uids.study, ("completed", "failed"))["status"] == "completed"
            refused = wait_exports(stack, uids.study, {"pacs", "refuses", "bad-key"}, timeout_s=60)
            assert refused["pacs"]["status"] == "sent"
            assert refused["refuses"]["status"] == "failed" and refused["refuses"]["attempts"] == 1
            assert "0xC000" in refused["refuses"]["last_error"], refused["refuses"]
            assert refused["bad-key"]["status"] == "failed" and refused["bad-key"]["attempts"] == 1
            assert "401" in refused["bad-key"]["last_error"], refused["bad-key"]
            assert refused["unreachable"]["status"] == "pending"  # still being retried, the others done
            final = wait_exports(stack, uids.study, {"unreachable", "wrong-ae"}, timeout_s=90)
            assert final["unreachable"]["status"] == "failed"
            assert "gave up after" in final["unreachable"]["last_error"], final["unreachable"]
            assert "refused" in final["unreachable"]["last_error"]
            assert final["wrong-ae"]["status"] == "failed" and final["wrong-ae"]["attempts"] == 1, final["wrong-ae"]
            assert "rejected" in final["wrong-ae"]["last_error"]
            assert stack.status(uids.study)["status"] == "completed"  # an export never fails the study
    finally:
        good.stop()
        refusing.stop()


def test_export_route_errors(stack: Stack) -> None:
    with destinations(stack, [_web(stack, "archive")]):
        unknown = httpx.post(f"{stack.url}/v1/studies/1.2.3.999/exports", headers=stack.auth)
        assert unknown.status_code == 404
        uids, datasets = ct_study(1)
        send(stack, datasets)
        stack.wait_status(uids.study, ("completed",))
        wait_exports(stack, uids.study, {"archive"})
        named = httpx.post(
            f"{stack.url}/v1/studies/{uids.study}/exports", json={"destination": "nowhere"}, headers=stack.auth
        )
        assert named.status_code == 404 and "nowhere" in named.text
        other = httpx.post(
            f"{stack.url}/v1/studies/{uids.study}/exports", headers={"Authorization": f"Bearer {KEY_BETA}"}
        )
        assert other.status_code in (404, 409)  # beta stored the exported SR under this study UID: no results

        # the CLI: `radstream export STUDY --to NAME`
        cli = [str(Path(sys.executable).parent / "radstream"), "export", uids.study, "--url", stack.url]
        cli += ["--api-key", KEY_ALPHA]
        done = subprocess.run([*cli, "--to", "archive"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["exports"] == ["archive"]
        wrong = subprocess.run([*cli, "--to", "nowhere"], capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1 and "404" in wrong.stdout and "nowhere" in wrong.stdout
