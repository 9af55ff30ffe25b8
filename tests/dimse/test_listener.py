"""The DIMSE listener against real senders on loopback: dcmtk's storescu and echoscu, and pynetdicom."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from requests import HTTPError

from loadtest import synthetic
from radstream import keys
from radstream.settings import Settings
from tests.conftest import KEY_ALPHA, KEY_BETA, Gateway, free_port
from tests.dimse.conftest import Listener, start_listener
from tests.gateway.stowhelp import BOUNDARY, multipart

WAIT_S = 20.0


def s3(settings: Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.aws_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="radstream",
        aws_secret_access_key="radstream",
    )


def study(n: int, rows: int = 32) -> tuple[synthetic.StudyUids, list[pydicom.Dataset]]:
    uids = synthetic.StudyUids.new()
    return uids, [synthetic.ct_slice(uids, i, rows=rows, cols=rows) for i in range(n)]


def associate(listener: Listener, calling: str, called: str = "RADSTREAM") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate(*listener.address, ae_title=called)


def manifests(settings: Settings, tenant: str, study_uid: str) -> list[dict[str, Any]]:
    client = s3(settings)
    listing = client.list_objects_v2(
        Bucket=settings.images_bucket, Prefix=keys.study_manifest_prefix(tenant, study_uid)
    )
    return [
        json.loads(client.get_object(Bucket=settings.images_bucket, Key=o["Key"])["Body"].read())
        for o in listing.get("Contents", [])
    ]


def open_records(settings: Settings) -> list[dict[str, Any]]:
    client = s3(settings)
    listing = client.list_objects_v2(Bucket=settings.images_bucket, Prefix=keys.OPEN_ASSOCIATIONS_PREFIX)
    return [
        json.loads(client.get_object(Bucket=settings.images_bucket, Key=o["Key"])["Body"].read())
        for o in listing.get("Contents", [])
    ]


def listed(settings: Settings, tenant: str, study_uid: str) -> set[str]:
    return {i["sop_instance_uid"] for m in manifests(settings, tenant, study_uid) for i in m["instances"]}


def wait_listed(settings: Settings, tenant: str, study_uid: str, count: int) -> set[str]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = listed(settings, tenant, study_uid)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    return listed(settings, tenant, study_uid)


def rejection(assoc: Any) -> tuple[int, int, int]:
    primitive = assoc.acceptor.primitive
    return (primitive.result, primitive.result_source, primitive.diagnostic)


def test_c_echo_from_a_known_peer(listener: Listener) -> None:
    out = subprocess.run(
        ["echoscu", "-aet", "MODALITY_A", "-aec", "RADSTREAM", *map(str, listener.address)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("STRANGER", "RADSTREAM", 0x03),  # calling AE title not recognised
        ("ELSEWHERE", "RADSTREAM", 0x03),  # a known AE title, from another host than its own
        ("MODALITY_A", "OTHER_SCP", 0x07),  # called AE title not recognised
    ],
)
def test_associations_are_rejected_with_the_matching_reason(
    listener: Listener, calling: str, called: str, reason: int
) -> None:
    assoc = associate(listener, calling, called)
    assert assoc.is_rejected
    assert rejection(assoc) == (0x01, 0x01, reason)  # rejected-permanent, by the DICOM UL service-user


def test_echoscu_reports_a_rejected_calling_ae(listener: Listener) -> None:
    out = subprocess.run(
        ["echoscu", "-aet", "STRANGER", "-aec", "RADSTREAM", *map(str, listener.address)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "Calling AE Title Not Recognized" in out.stdout + out.stderr


def test_a_peer_bound_to_its_host_is_accepted_from_it(listener: Listener) -> None:
    assoc = associate(listener, "ONLY_LOCAL")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_storescu_stores_a_folder_and_the_release_writes_its_manifest(listener: Listener, tmp_path: Path) -> None:
    uids, datasets = study(5)
    for i, ds in enumerate(datasets):
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
    out = subprocess.run(
        ["storescu", "-aet", "MODALITY_A", "-aec", "RADSTREAM", "+sd", *map(str, listener.address), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert wait_listed(listener.settings, "alpha", uids.study, 5) == {ds.SOPInstanceUID for ds in datasets}
    (manifest,) = manifests(listener.settings, "alpha", uids.study)  # one association: one manifest
    assert manifest["tenant"] == "alpha" and len(manifest["instances"]) == 5


def test_stored_objects_are_part10_files_with_a_file_meta_from_the_context(listener: Listener) -> None:
    uids, datasets = study(2)
    assoc = associate(listener, "MODALITY_A")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000, 0x0000]
    assoc.release()
    client = s3(listener.settings)
    for ds in datasets:
        key = keys.instance_key("alpha", uids.study, uids.series, ds.SOPInstanceUID)
        stored = client.get_object(Bucket=listener.settings.images_bucket, Key=key)
        read = pydicom.dcmread(io.BytesIO(stored["Body"].read()))  # no force: a real Part 10 file
        assert read.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert read.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert read.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert read.file_meta.TransferSyntaxUID == stored["Metadata"]["transfer-syntax"]
        assert read.file_meta.SourceApplicationEntityTitle == "MODALITY_A"
        assert read.PixelData == ds.PixelData


def test_an_identical_resend_is_stored_once_and_different_content_is_refused(listener: Listener) -> None:
    uids, datasets = study(2)
    assoc = associate(listener, "MODALITY_A")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000, 0x0000]
    assoc.release()
    assert len(wait_listed(listener.settings, "alpha", uids.study, 2)) == 2
    changed = copy.deepcopy(datasets[1])
    changed.SeriesDescription = "changed"
    assoc = associate(listener, "MODALITY_A")
    again, conflict = assoc.send_c_store(datasets[0]), assoc.send_c_store(changed)
    assoc.release()
    assert again.Status == 0x0000
    assert conflict.Status == 0x0111 and "different content" in conflict.ErrorComment
    time.sleep(2.0)  # the quiet flush and the release have had their time
    assert len(manifests(listener.settings, "alpha", uids.study)) == 1  # nothing new to process


def test_a_data_set_without_its_study_uid_cannot_be_understood(listener: Listener) -> None:
    _, (ds,) = study(1)
    del ds.StudyInstanceUID
    assoc = associate(listener, "MODALITY_A")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC001  # PS3.7 "Cannot understand" class (Cxxx): a required attribute is missing


def test_an_aborted_association_still_writes_the_manifest_of_what_it_stored(listener: Listener) -> None:
    uids, datasets = study(3)
    assoc = associate(listener, "MODALITY_A")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * 3
    assoc.abort()
    assert wait_listed(listener.settings, "alpha", uids.study, 3) == {ds.SOPInstanceUID for ds in datasets}


def test_an_open_association_is_flushed_when_quiet(listener: Listener) -> None:
    uids, datasets = study(3)
    assoc = associate(listener, "MODALITY_A")
    assert [assoc.send_c_store(ds).Status for ds in datasets[:2]] == [0x0000] * 2
    assert len(wait_listed(listener.settings, "alpha", uids.study, 2)) == 2  # still open: flushed after 1 s
    assert assoc.is_established
    assert assoc.send_c_store(datasets[2]).Status == 0x0000
    assoc.release()
    assert len(wait_listed(listener.settings, "alpha", uids.study, 3)) == 3
    assert len(manifests(listener.settings, "alpha", uids.study)) == 2


def test_each_peer_stores_into_its_own_tenant(listener: Listener, gateway: Gateway) -> None:
    uids, datasets = study(2)
    assoc = associate(listener, "MODALITY_B")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * 2
    assoc.release()
    assert len(wait_listed(listener.settings, "beta", uids.study, 2)) == 2
    assert listed(listener.settings, "alpha", uids.study) == set()
    url = f"{gateway.url}/v1/studies/{uids.study}"
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY_ALPHA}"}).status_code == 404
    status = httpx.get(url, headers={"Authorization": f"Bearer {KEY_BETA}"})
    assert status.status_code == 200 and status.json()["instances"] == 2


def test_accepted_sockets_have_tcp_nodelay(settings: Settings) -> None:
    """In-process, to look at the accepted socket itself (with Nagle, each C-STORE response waited for a
    delayed ACK: 10-14x slower here)."""
    from dimse.listener import Listener as AcceptingListener
    from dimse.peers import PeerTable

    loop = asyncio.new_event_loop()
    running = threading.Thread(target=loop.run_forever, daemon=True)
    running.start()
    own = settings.model_copy(update={"dimse_port": free_port()})
    server = AcceptingListener(own, PeerTable([], any_ae_tenant="alpha"), None, None, None, loop)  # type: ignore[arg-type]
    server.start()
    try:
        ae = AE(ae_title="ANY")
        ae.add_requested_context(Verification)
        assoc = ae.associate(own.dimse_host, own.dimse_port, ae_title="RADSTREAM")
        assert assoc.is_established
        (accepted,) = [a for a in server.ae.active_associations if a.is_acceptor]
        sock = accepted.dul.socket.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assoc.release()
    finally:
        server.stop()
        loop.call_soon_threadsafe(loop.stop)
        running.join(5)
        loop.close()


# ------------------------------------------------------------------------------------- storage outage
class SwitchableProxy:
    """TCP to the emulator that can be cut: while down, every connection (open or new) is closed."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def down(self) -> None:
        self.up = False
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def cut_off(settings: Settings, tmp_path: Path) -> Iterator[tuple[Listener, SwitchableProxy]]:
    assert settings.aws_endpoint_url is not None
    host, _, port = settings.aws_endpoint_url.removeprefix("http://").partition(":")
    proxy = SwitchableProxy((host, int(port)))
    running = start_listener(
        settings,
        dimse_peers="alpha:MODALITY_A",
        state_dir=tmp_path,
        aws_endpoint_url=f"http://127.0.0.1:{proxy.port}",
        aws_max_attempts=1,
        aws_connect_timeout_s=1.0,
    )
    try:
        yield running, proxy
    finally:
        running.supervisor.stop()
        proxy.close()


def test_storage_unavailable_is_out_of_resources_and_a_retry_is_stored(
    cut_off: tuple[Listener, SwitchableProxy],
) -> None:
    listener, proxy = cut_off
    uids, datasets = study(2)
    assoc = associate(listener, "MODALITY_A")
    assert assoc.send_c_store(datasets[0]).Status == 0x0000
    proxy.down()
    refused = assoc.send_c_store(datasets[1])
    assert refused.Status == 0xA700  # out of resources: the sender retries
    proxy.up = True
    assert assoc.send_c_store(datasets[1]).Status == 0x0000  # the sender's retry
    assoc.release()
    assert wait_listed(listener.settings, "alpha", uids.study, 2) == {ds.SOPInstanceUID for ds in datasets}


def test_the_same_data_set_in_another_wrapper_counts_as_stored(listener: Listener, gateway: Gateway) -> None:
    """Received by C-STORE (a File Meta of RadStream's), then sent again by dicomweb-client (its own File
    Meta, no preamble) and as a file with a preamble of its own: one instance, stored once, no conflict."""
    uids, datasets = study(2)
    assoc = associate(listener, "MODALITY_A")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * 2
    assoc.release()
    assert len(wait_listed(listener.settings, "alpha", uids.study, 2)) == 2
    web = DICOMwebClient(url=f"{gateway.url}/dicomweb", headers=gateway.auth())
    result = web.store_instances([datasets[0]])
    assert "FailedSOPSequence" not in result
    assert len(result.ReferencedSOPSequence) == 1
    rewrapped = io.BytesIO()
    datasets[1].preamble = b"\x01" * 128
    datasets[1].save_as(rewrapped, enforce_file_format=True)
    response = httpx.post(
        f"{gateway.url}/dicomweb/studies/{uids.study}",
        content=multipart([rewrapped.getvalue()]),
        headers={**gateway.auth(), "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert len(manifests(listener.settings, "alpha", uids.study)) == 1  # nothing new to process
    different = copy.deepcopy(datasets[0])
    different.SeriesDescription = "not the same data set"
    with pytest.raises(HTTPError) as refused:
        web.store_instances([different])
    assert refused.value.response.status_code == 409
    (failed,) = refused.value.response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0111]


def test_a_listener_killed_mid_association_loses_nothing_it_acknowledged(settings: Settings, tmp_path: Path) -> None:
    """SIGKILL after five acknowledgements and before any manifest: the next listener writes it."""
    quiet = {"dimse_peers": "alpha:MODALITY_A", "dimse_flush_quiet_s": 600.0, "dimse_flush_instances": 1000}
    first = start_listener(settings, state_dir=tmp_path / "a", **quiet)
    uids, datasets = study(5)
    try:
        assoc = associate(first, "MODALITY_A")
        assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * 5
        os.kill(first.pid, signal.SIGKILL)
        first.supervisor.stop()
    finally:
        first.supervisor.stop()
    client = s3(first.settings)
    stored = client.list_objects_v2(Bucket=settings.images_bucket, Prefix=f"instances/alpha/{uids.study}/")
    assert stored["KeyCount"] == 5  # stored and acknowledged ...
    assert listed(first.settings, "alpha", uids.study) == set()  # ... and in no manifest yet
    assert any(uids.study in record["studies"] for record in open_records(first.settings))
    second = start_listener(settings, state_dir=tmp_path / "b", **quiet)
    try:
        assert wait_listed(second.settings, "alpha", uids.study, 5) == {ds.SOPInstanceUID for ds in datasets}
        (manifest,) = manifests(second.settings, "alpha", uids.study)
        assert len(manifest["instances"]) == 5
        assert all(uids.study not in record["studies"] for record in open_records(second.settings))  # closed
    finally:
        second.supervisor.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_1_gb_study_in_one_association_in_bounded_memory(settings: Settings, tmp_path: Path) -> None:
    """256 instances of 4 MiB (1450x1450, 16-bit) in one association: the listener's peak RSS stays under
    300 MB, and every instance is listed."""
    running = start_listener(settings, dimse_peers="alpha:MODALITY_A", state_dir=tmp_path)
    try:
        uids = synthetic.StudyUids.new()
        assoc = associate(running, "MODALITY_A")
        sent = 0
        for i in range(256):
            ds = synthetic.ct_slice(uids, i, rows=1450, cols=1450)
            sent += len(ds.PixelData)
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert sent > 1024**3
        assert len(wait_listed(running.settings, "alpha", uids.study, 256)) == 256
        status = Path(f"/proc/{running.pid}/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        assert peak_kib < 300 * 1000, f"peak RSS {peak_kib / 1024:.0f} MiB"
    finally:
        running.supervisor.stop()


def test_metrics_count_associations_and_instances_by_peer(listener: Listener) -> None:
    assert associate(listener, "STRANGER").is_rejected
    _, datasets = study(2)
    assoc = associate(listener, "MODALITY_B")
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * 2
    assoc.release()
    url = f"http://{listener.settings.dimse_host}:{listener.settings.dimse_metrics_port}/metrics"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=5).text
        if 'event="released"' in text:
            break
        time.sleep(0.2)
    assert 'radstream_dimse_associations_total{event="rejected",reason="calling_ae"}' in text
    assert 'radstream_dimse_instances_total{peer="MODALITY_B",status="0x0000"}' in text
    assert "radstream_dimse_stored_bytes_total" in text
    assert synthetic.FAKE_PATIENT_NAME not in text and synthetic.FAKE_PATIENT_ID not in text
