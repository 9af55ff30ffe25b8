"""`radstream send` and the other client commands on bad input, a failing server and an unreachable one:
every DICOM file found is accounted for, nothing ends in a traceback, the exit code says whether all was
stored. Against the real gateway where it can show the case; a loopback stub where the case is a server
misbehaving in a way ours does not (503 then success, unreadable answers)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from cli import send as client
from loadtest import synthetic
from tests.conftest import KEY_ALPHA, Gateway, free_port

RADSTREAM = str(Path(sys.executable).parent / "radstream")


def _slices(folder: Path, count: int, uids: synthetic.StudyUids | None = None) -> list[Path]:
    uids = uids or synthetic.StudyUids.new()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"slice{i}.dcm"
        path.write_bytes(synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=32, cols=32)))
        paths.append(path)
    return paths


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RADSTREAM, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _send(gateway: Gateway, paths: list[Path], **kwargs: Any) -> client.SendReport:
    return asyncio.run(client.send(paths, url=gateway.url, api_key=kwargs.pop("api_key", KEY_ALPHA), **kwargs))


# --- what the scan finds ------------------------------------------------------------------------------


def test_dicom_files_the_gateway_would_refuse_are_failures_not_skipped(tmp_path: Path) -> None:
    uids = synthetic.StudyUids.new()
    no_study = synthetic.ct_slice(uids, 0, rows=16, cols=16)
    del no_study.StudyInstanceUID
    (tmp_path / "no-study.dcm").write_bytes(synthetic.to_bytes(no_study))
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, True
    write_dataset(raw, synthetic.ct_slice(uids, 1, rows=16, cols=16))
    (tmp_path / "no-file-meta.dcm").write_bytes(raw.getvalue())
    (tmp_path / "notes.txt").write_text("not an image")

    report = client.SendReport()
    assert client.scan([tmp_path], report) == {}
    assert report.found == 2 and report.failed == 2 and not report.ok
    text = "\n".join(report.failures)
    assert "no-study.dcm" in text and "0xC001" in text and "StudyInstanceUID is missing" in text
    assert "no-file-meta.dcm" in text and "without File Meta" in text and "dcmconv +F" in text
    assert len(report.skipped) == 1 and "notes.txt" in report.skipped[0]


def test_links_are_followed_each_file_counted_once_and_broken_ones_reported(tmp_path: Path) -> None:
    study = _slices(tmp_path / "real", 3)
    top = tmp_path / "top"
    top.mkdir()
    (top / "study").symlink_to(tmp_path / "real", target_is_directory=True)
    (top / "loop").symlink_to(top, target_is_directory=True)
    (top / "again.dcm").symlink_to(study[0])
    (top / "gone.dcm").symlink_to(tmp_path / "missing.dcm")

    report = client.SendReport()
    studies = client.scan([top, study[1]], report)
    found = sorted(i.path.name for instances in studies.values() for i in instances)
    assert found == ["again.dcm", "slice1.dcm", "slice2.dcm"]  # slice0 is again.dcm; slice1 named twice
    assert report.found == 3
    assert len(report.unreadable) == 1 and "gone.dcm" in report.unreadable[0]
    assert not report.ok


def test_bodies_are_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    path.write_bytes(b"\0" * (3 * client.READ_CHUNK_BYTES + 5))
    instance = client.LocalInstance(path, "1.2.3", "1.2.3.4", path.stat().st_size)

    async def sizes() -> list[int]:
        return [len(chunk) async for chunk in client.multipart_body([instance], "b")]

    chunks = asyncio.run(sizes())
    assert max(chunks) == client.READ_CHUNK_BYTES
    assert sum(chunks) > 3 * client.READ_CHUNK_BYTES


# --- against the real gateway ---------------------------------------------------------------------------


def test_a_refused_request_counts_each_of_its_instances(gateway: Gateway, tmp_path: Path) -> None:
    paths = _slices(tmp_path, 5)
    report = _send(gateway, paths, api_key="wrong-key", batch=2)
    assert report.stored == 0
    assert report.failed == 5 == report.found
    assert len(report.failures) == 3 and all("HTTP 401" in line for line in report.failures)


def test_a_file_that_disappears_before_it_is_sent_fails_alone(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uids = synthetic.StudyUids.new()
    paths = _slices(tmp_path, 4, uids)
    original = client.scan

    def scan_then_delete(found: list[Path], report: client.SendReport) -> dict[str, list[client.LocalInstance]]:
        studies = original(found, report)
        paths[2].unlink()
        return studies

    monkeypatch.setattr(client, "scan", scan_then_delete)
    report = _send(gateway, [tmp_path], batch=4)
    assert report.found == 4 and report.stored == 3 and report.failed == 1
    assert len(report.failures) == 1 and "slice2.dcm" in report.failures[0]
    status = httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth()).json()
    assert status["instances"] == 3


def test_cli_summary_and_exit_codes(gateway: Gateway, tmp_path: Path) -> None:
    _slices(tmp_path / "good", 2)
    bad = synthetic.ct_slice(synthetic.StudyUids.new(), 0, rows=16, cols=16)
    del bad.SeriesInstanceUID
    (tmp_path / "good" / "bad.dcm").write_bytes(synthetic.to_bytes(bad))
    result = _run("send", str(tmp_path / "good"), "--url", gateway.url + "/", "--api-key", KEY_ALPHA)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"DICOM instances found\s+│\s+3 │", result.stdout), result.stdout
    assert re.search(r"stored\s+│\s+2 │", result.stdout) and re.search(r"failed\s+│\s+1 │", result.stdout)
    assert "bad.dcm" in result.stdout and "0xC001" in result.stdout

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing to send")
    result = _run("send", str(tmp_path / "empty"), "--url", gateway.url, "--api-key", KEY_ALPHA)
    assert result.returncode == 1 and "no DICOM files found" in result.stdout


def test_status_and_results_with_a_trailing_slash_a_dead_gateway_and_a_bad_sr_path(
    gateway: Gateway, tmp_path: Path
) -> None:
    uids = synthetic.StudyUids.new()
    _slices(tmp_path, 1, uids)
    assert _run("send", str(tmp_path), "--url", gateway.url, "--api-key", KEY_ALPHA).returncode == 0

    ok = _run("status", uids.study, "--url", gateway.url + "/", "--api-key", KEY_ALPHA)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["instances"] == 1

    dead = f"http://127.0.0.1:{free_port()}"
    for command in (["status", uids.study], ["results", uids.study]):
        result = _run(*command, "--url", dead, "--api-key", KEY_ALPHA)
        assert result.returncode == 1
        assert "cannot reach the gateway" in result.stdout and "Traceback" not in result.stdout + result.stderr

    with Stub([(200, "application/json", b"{}"), (200, "application/dicom", b"DICM")]) as url:
        result = _run("results", uids.study, "--url", url, "--api-key", KEY_ALPHA, "--sr", "/nonexistent/dir/x.dcm")
    assert result.returncode == 1
    assert "cannot write the DICOM SR" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_stats_without_the_emulator_says_so(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = _run("stats", env={"RADSTREAM_AWS_ENDPOINT_URL": dead, "RADSTREAM_AWS_MAX_ATTEMPTS": "1"})
    assert result.returncode == 1
    assert "cannot read the data lake" in result.stdout and "Traceback" not in result.stdout + result.stderr


# --- a loopback stub for answers our gateway does not give ----------------------------------------------


class Stub:
    """HTTP/1.1 on 127.0.0.1 answering each request with the next of ``answers`` (status, type, body);
    request bodies (chunked or not) are read whole and kept."""

    def __init__(self, answers: list[tuple[int, str, bytes]], headers: dict[str, str] | None = None) -> None:
        self.answers = list(answers)
        self.headers = headers or {}
        self.bodies: list[bytes] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    data = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self) -> None:
                stub.bodies.append(self._read_body())
                status, media, body = stub.answers.pop(0)
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body)))
                for name, value in stub.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _response(referenced: list[str], failed: list[tuple[str | None, Any]]) -> bytes:
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [s]}} for s in referenced]}
    if failed:
        items = []
        for sop, reason in failed:
            item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
            if sop is not None:
                item["00081155"] = {"vr": "UI", "Value": [sop]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    return json.dumps(body).encode()


@pytest.fixture
def three(tmp_path: Path) -> tuple[list[Path], list[str]]:
    paths = _slices(tmp_path, 3)
    report = client.SendReport()
    studies = client.scan(paths, report)
    return paths, [i.sop_instance_uid for instances in studies.values() for i in instances]


def test_503_with_retry_after_sends_the_batch_again(three: tuple[list[Path], list[str]]) -> None:
    paths, sops = three
    answers = [(503, "application/json", b'{"detail":"busy"}'), (200, "application/dicom+json", _response(sops, []))]
    with Stub(answers, headers={"Retry-After": "0"}) as url:
        stub_report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3))
    assert stub_report.stored == 3 and stub_report.failed == 0 and stub_report.retries == 1
    assert stub_report.ok


def test_a_503_that_persists_fails_after_the_retries(three: tuple[list[Path], list[str]]) -> None:
    paths, _sops = three
    answers = [(503, "application/json", b'{"detail":"busy"}')] * 3
    with Stub(answers, headers={"Retry-After": "0"}) as url:
        report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3, retries=2))
    assert report.retries == 2 and report.failed == 3 and "HTTP 503" in report.failures[0]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"this is not json", "unreadable Store Instances Response"),
        (b"[1, 2]", "unreadable Store Instances Response"),
        (b"{}", "does not mention 3 of the instances"),
    ],
)
def test_unreadable_or_incomplete_answers_are_failures(
    three: tuple[list[Path], list[str]], body: bytes, expected: str
) -> None:
    paths, _sops = three
    with Stub([(200, "application/dicom+json", body)]) as url:
        report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3))
    assert report.stored == 0 and report.failed == 3
    assert expected in report.failures[0]


def test_answers_naming_some_instances_and_odd_reason_values(three: tuple[list[Path], list[str]]) -> None:
    paths, sops = three
    body = _response([sops[0]], [(sops[1], "0xC000 as text")])
    with Stub([(200, "application/dicom+json", body)]) as url:
        report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3))
    assert report.stored == 1 and report.failed == 2
    assert any("0xC000 as text" in line for line in report.failures)
    assert any("does not mention 1 of the instances" in line and sops[2] in line for line in report.failures)


def test_instances_refused_for_want_of_storage_in_a_partial_answer_go_again_alone(
    three: tuple[list[Path], list[str]],
) -> None:
    paths, sops = three
    answers = [
        (202, "application/dicom+json", _response([sops[0]], [(sops[1], 0xA700), (sops[2], 0xC000)])),
        (200, "application/dicom+json", _response([sops[1]], [])),
    ]
    stub = Stub(answers, headers={"Retry-After": "0"})
    with stub as url:
        report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3))
    assert report.stored == 2 and report.failed == 1 and report.retries == 1, report
    resent = stub.bodies[1]
    assert sops[1].encode() in resent and sops[0].encode() not in resent and sops[2].encode() not in resent
    assert len(report.failures) == 1 and sops[2] in report.failures[0]  # 0xC000 is not sent again


def test_a_refusal_for_want_of_storage_on_the_last_try_is_a_failure(three: tuple[list[Path], list[str]]) -> None:
    paths, sops = three
    partial = (202, "application/dicom+json", _response(sops[:2], [(sops[2], 0xA700)]))
    with Stub([partial, (202, "application/dicom+json", _response([], [(sops[2], 0xA700)]))]) as url:
        report = asyncio.run(client.send(paths, url=url, api_key="k", batch=3, retries=1))
    assert report.stored == 2 and report.failed == 1 and report.retries == 1
    assert "0xA700" in report.failures[0]
