"""Receivers for the export tests: a pynetdicom storage SCP and a scripted STOW-RS server on 127.0.0.1, and
dcmtk's storescp and Orthanc in a network namespace that has only ``lo``.

Neither storescp 3.6 nor Orthanc 1.10 can bind to 127.0.0.1 alone, so they run inside namespace
``rsexport<pid>`` and so does the sender: :func:`ns_send` runs :func:`ns_client` there, in a child process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage  # type: ignore[attr-defined]

from infra.local.processes import ProcessSpec
from infra.local.supervisor import Supervisor
from loadtest.orthanc import ORTHANC_PLUGIN_CANDIDATES, orthanc_config

ROOT = Path(__file__).resolve().parents[2]
ORTHANC_HTTP_PORT = 8042
ORTHANC_DICOM_PORT = 4242
ORTHANC_AE = "ORTHANC"
STORESCP_PORT = 11112
STORESCP_REFUSING_PORT = 11113
STORESCP_AE = "STORESCP"
PATIENT_TEXT = "Doe^Jane"  # the patient of the results test sources: never in a reason


def build_objects() -> list[bytes]:
    """An SR and a SEG of a new three-slice CT study (the project's own builders), as Part 10 bytes."""
    from tests.results.results_sources import THRESHOLD, blob_heatmap, make_ct_series, make_output
    from worker.results import build_segs, build_sr, dataset_to_bytes

    ct = make_ct_series(generate_uid())
    outputs = [
        make_output(ct[0], 0.92, blob_heatmap(10, 12)),
        make_output(ct[1], 0.71, blob_heatmap(20, 8)),
        make_output(ct[2], 0.08, blob_heatmap(16, 16) * 0.1),
    ]
    segs = build_segs(ct, outputs, THRESHOLD)
    assert len(segs) == 1
    return [dataset_to_bytes(build_sr(ct, outputs, threshold=THRESHOLD)), *(dataset_to_bytes(s) for s in segs)]


def write_objects(objects: list[bytes], directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(objects):
        path = directory / f"object{index}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def objects() -> list[bytes]:
    return build_objects()


# --------------------------------------------------------------------------------- pynetdicom storage SCP
@dataclasses.dataclass
class StorageScp:
    """A storage SCP on 127.0.0.1 (called AE ``STORE_SCP``, checked) answering ``status`` to every C-STORE."""

    ae: AE
    port: int = 0
    status: int = 0x0000
    error_comment: str | None = None
    delay_s: float = 0.0  # before answering
    abort: bool = False
    received: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (SOP Instance UID, syntax)
    datasets: list[Dataset] = dataclasses.field(default_factory=list)
    server: Any = None

    def on_store(self, event: Any) -> Dataset | int:
        if self.abort:
            event.assoc.abort()
            return 0x0000
        if self.delay_s:
            time.sleep(self.delay_s)
        dataset = event.dataset
        self.received.append((str(dataset.SOPInstanceUID), str(event.context.transfer_syntax)))
        self.datasets.append(dataset)
        answer = Dataset()
        answer.Status = self.status
        if self.error_comment is not None:
            answer.ErrorComment = self.error_comment
        return answer

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )
        self.port = int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def storage_ae(syntaxes: list[str] | None = None, sop_classes: list[str] | None = None) -> AE:
    ae = AE(ae_title="STORE_SCP")
    for sop_class in sop_classes or [Comprehensive3DSRStorage, SegmentationStorage]:
        ae.add_supported_context(sop_class, syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.require_called_aet = True
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


@pytest.fixture(scope="module")
def _shared_scp() -> Iterator[StorageScp]:
    server = StorageScp(storage_ae())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scp(_shared_scp: StorageScp) -> StorageScp:
    """The module's SCP, answering success again (stopping a pynetdicom server takes half a second)."""
    server = _shared_scp
    server.status, server.error_comment, server.abort = 0x0000, None, False
    server.received.clear()
    server.datasets.clear()
    return server


# --------------------------------------------------------------------------------- scripted STOW-RS server
@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/dicom+json"
    delay_s: float = 0.0
    hang_up: bool = False  # close the connection without answering


class StowServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StowHandler)
        self.answer = Answer()
        self.requests: list[Received] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicomweb"


class _StowHandler(BaseHTTPRequestHandler):
    server: StowServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        answer = self.server.answer
        if answer.delay_s:
            time.sleep(answer.delay_s)
        if answer.hang_up:
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stow_server() -> Iterator[StowServer]:
    server = StowServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------------- namespace receivers
@dataclasses.dataclass
class Namespace:
    name: str
    work: Path
    storescp_dir: Path


def _ns_listening(ns: str, port: int) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    )
    return done.returncode == 0 and bool(done.stdout.strip())


def _ns_http_ready(ns: str, url: str) -> bool:
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=1).close()"
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, timeout=10)
    return done.returncode == 0


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    """storescp (accepting on 11112, refusing on 11113) and Orthanc (DICOMweb on 8042, DIMSE on 4242,
    called AE checked) in a namespace of their own with only ``lo``."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace (CI runs as root)")
    storescp = shutil.which("storescp")
    orthanc = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((p for p in ORTHANC_PLUGIN_CANDIDATES if p.exists()), None)
    if storescp is None or orthanc is None or plugin is None:
        pytest.skip("needs dcmtk's storescp, Orthanc and its DICOMweb plugin (scripts/system-deps.sh)")
    work = tmp_path_factory.mktemp("export-receivers")
    received = work / "storescp"
    received.mkdir()
    ns = f"rsexport{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
    supervisor = Supervisor()
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        for name, port, extra in (
            ("storescp", STORESCP_PORT, []),
            ("storescp-refusing", STORESCP_REFUSING_PORT, ["--refuse"]),
        ):
            argv = [storescp, "-aet", STORESCP_AE, "-od", str(received), *extra, str(port)]
            supervisor.start(
                ProcessSpec(
                    name=name,
                    argv=["ip", "netns", "exec", ns, *argv],
                    log_path=work / f"{name}.log",
                    ready=lambda port=port: _ns_listening(ns, port),  # type: ignore[misc]
                    ready_timeout_s=20,
                )
            )
        config = orthanc_config(work, ORTHANC_HTTP_PORT, plugin)
        config.update(DicomPort=ORTHANC_DICOM_PORT, DicomAet=ORTHANC_AE, DicomCheckCalledAet=True)
        (work / "orthanc.json").write_text(json.dumps(config))
        supervisor.start(
            ProcessSpec(
                name="orthanc",
                argv=["ip", "netns", "exec", ns, orthanc, str(work / "orthanc.json")],
                log_path=work / "orthanc.log",
                ready=lambda: _ns_http_ready(ns, f"http://127.0.0.1:{ORTHANC_HTTP_PORT}/system"),
                ready_timeout_s=60,
            )
        )
        yield Namespace(name=ns, work=work, storescp_dir=received)
    finally:
        supervisor.stop()
        subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True, timeout=30)


def ns_send(ns: Namespace, jobs: list[dict[str, Any]], timeout_s: float = 60) -> list[dict[str, Any]]:
    """Run ``jobs`` (see :func:`ns_client`) inside the namespace; what each gave, in order."""
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns.name,
            sys.executable,
            "-c",
            "from tests.export.conftest import ns_client; ns_client()",
        ],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def ns_client() -> None:
    """Read a JSON list of jobs on stdin, print a JSON list of their outcomes (run inside the namespace).

    * ``{"op": "dimse" | "dicomweb", "destination": {...}, "files": [...], "timeout_s": ...}``
      -> ``{"delivered": n}`` or ``{"error": "ExportRefused" | "ExportUnavailable", "reason": ...}``;
    * ``{"op": "stow", "url": ..., "files": [...]}`` -> ``{"status": ..., "failure_reasons": [...] | None}``
      (a plain STOW-RS request, to see what the server itself answers);
    * ``{"op": "get", "url": ...}`` -> ``{"status": ..., "json": ...}``.
    """
    import asyncio

    import httpx

    from radstream.destinations import DicomwebDestination, DimseDestination
    from worker.export.send import ExportRefused, ExportUnavailable, send_dicomweb, send_dimse

    results: list[dict[str, Any]] = []
    for job in json.loads(sys.stdin.read()):
        objects = [Path(f).read_bytes() for f in job.get("files", [])]
        try:
            if job["op"] == "dimse":
                delivered = send_dimse(DimseDestination(**job["destination"]), objects, timeout_s=job["timeout_s"])
                results.append({"delivered": delivered})
            elif job["op"] == "dicomweb":
                destination = DicomwebDestination(**job["destination"])
                delivered = asyncio.run(send_dicomweb(destination, objects, timeout_s=job["timeout_s"]))
                results.append({"delivered": delivered})
            elif job["op"] == "stow":
                boundary = "rsexportboundary"
                body = b"".join(
                    b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + o + b"\r\n"
                    for o in objects
                )
                headers = {
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                }
                answer = httpx.post(job["url"], content=body + f"--{boundary}--\r\n".encode(), headers=headers)
                document = answer.json() if answer.content else {}
                failed = document.get("00081198", {}).get("Value") if isinstance(document, dict) else None
                reasons = [item.get("00081197", {}).get("Value", [None])[0] for item in failed] if failed else None
                results.append({"status": answer.status_code, "failure_reasons": reasons})
            elif job["op"] == "get":
                answer = httpx.get(job["url"])
                results.append({"status": answer.status_code, "json": answer.json()})
        except (ExportRefused, ExportUnavailable) as exc:
            results.append({"error": type(exc).__name__, "reason": exc.reason})
    print(json.dumps(results))
