"""worker.export.send against real receivers: a pynetdicom SCP and a scripted STOW-RS server on 127.0.0.1,
dcmtk's storescp and Orthanc (DICOMweb and DIMSE) in a network namespace with only ``lo``."""

from __future__ import annotations

import io
import json
import socket
import threading
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage  # type: ignore[attr-defined]

from radstream.destinations import DicomwebDestination, DimseDestination
from tests.export.conftest import (
    ORTHANC_AE,
    ORTHANC_DICOM_PORT,
    ORTHANC_HTTP_PORT,
    PATIENT_TEXT,
    STORESCP_AE,
    STORESCP_PORT,
    STORESCP_REFUSING_PORT,
    Answer,
    Namespace,
    StorageScp,
    StowServer,
    build_objects,
    ns_send,
    storage_ae,
    write_objects,
)
from worker.export.send import ExportRefused, ExportUnavailable, send_dicomweb, send_dimse


def dimse(port: int, ae_title: str = "STORE_SCP", host: str = "127.0.0.1") -> DimseDestination:
    return DimseDestination(tenant="alpha", name="pacs", kind="dimse", host=host, port=port, ae_title=ae_title)


def dicomweb(url: str, headers: dict[str, str] | None = None) -> DicomwebDestination:
    return DicomwebDestination.model_validate(
        {"tenant": "alpha", "name": "pacs", "kind": "dicomweb", "url": url, "headers": headers or {}}
    )


def sop_uids(objects: list[bytes]) -> list[str]:
    return [str(pydicom.dcmread(io.BytesIO(o), stop_before_pixels=True).SOPInstanceUID) for o in objects]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def failed_sops(*codes: int) -> bytes:
    """A STOW-RS answer whose FailedSOPSequence has one item per code, and patient text besides."""
    items = [
        {
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.34"]},
            "00081155": {"vr": "UI", "Value": [f"1.2.3.{i}"]},
            "00081197": {"vr": "US", "Value": [code]},
        }
        for i, code in enumerate(codes)
    ]
    document = {"00081198": {"vr": "SQ", "Value": items}, "00100010": {"vr": "PN", "Value": [PATIENT_TEXT]}}
    return json.dumps(document).encode()


# --------------------------------------------------------------------------------- DIMSE, pynetdicom SCP
def test_dimse_delivers_every_object_over_a_nodelay_socket(
    scp: StorageScp, objects: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodelay: list[int] = []
    original = Association.send_c_store

    def spy(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        sock = self.dul.socket.socket  # type: ignore[union-attr]
        assert sock is not None
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return original(self, dataset, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", spy)
    assert send_dimse(dimse(scp.port), objects, timeout_s=10) == 2
    assert [uid for uid, _ in scp.received] == sop_uids(objects)
    assert len(nodelay) == 2 and all(nodelay), nodelay  # set before the first C-STORE (before connect, in fact)
    sent = pydicom.dcmread(io.BytesIO(objects[0]))
    assert scp.datasets[0].to_json_dict() == sent.to_json_dict()


def test_dimse_converts_to_the_accepted_uncompressed_syntax(objects: list[bytes]) -> None:
    server = StorageScp(storage_ae(syntaxes=[ImplicitVRLittleEndian]))
    server.start()
    try:
        assert send_dimse(dimse(server.port), objects, timeout_s=10) == 2
    finally:
        server.stop()
    assert [syntax for _, syntax in server.received] == [ImplicitVRLittleEndian] * 2
    received, sent = server.datasets[1], pydicom.dcmread(io.BytesIO(objects[1]))
    assert received.PixelData == sent.PixelData  # implicit VR leaves its VR (OB or OW) open
    del received.PixelData, sent.PixelData
    assert received.to_json_dict() == sent.to_json_dict()


@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (0xA700, ExportUnavailable, "C-STORE status 0xA700 (Out of Resources)"),
        (0xA7F0, ExportUnavailable, "C-STORE status 0xA7F0 (Out of Resources)"),
        (0x0213, ExportUnavailable, "C-STORE status 0x0213 (Resource Limitation)"),
        (0xC000, ExportRefused, "C-STORE status 0xC000 (Cannot Understand)"),
        (0xA900, ExportRefused, "C-STORE status 0xA900 (Data Set Does Not Match SOP Class)"),
        (0x0122, ExportRefused, "C-STORE status 0x0122 (SOP Class Not Supported)"),
        (0x0124, ExportRefused, "C-STORE status 0x0124 (Not Authorised)"),
        (0x0211, ExportRefused, "C-STORE status 0x0211 (Unrecognised Operation)"),
        (0xFB00, ExportRefused, "C-STORE status 0xFB00 (unknown status)"),
    ],
)
def test_dimse_failure_statuses(
    scp: StorageScp, objects: list[bytes], status: int, error: type[Exception], reason: str
) -> None:
    scp.status = status
    scp.error_comment = f"{PATIENT_TEXT} PID-0042 rejected"
    with pytest.raises(error) as caught:
        send_dimse(dimse(scp.port), objects, timeout_s=10)
    assert caught.value.reason == reason == str(caught.value)  # type: ignore[attr-defined]
    assert len(scp.received) == 1  # the first failure ends the association


@pytest.mark.parametrize("status", [0xB000, 0xB006, 0xB007, 0x0111])
def test_dimse_warnings_and_duplicates_count_as_delivered(scp: StorageScp, objects: list[bytes], status: int) -> None:
    scp.status = status
    assert send_dimse(dimse(scp.port), objects, timeout_s=10) == 2


def test_dimse_wrong_called_ae_is_refused(scp: StorageScp, objects: list[bytes]) -> None:
    with pytest.raises(ExportRefused, match=r"^association rejected \(permanent\): called AE title not recognised$"):
        send_dimse(dimse(scp.port, ae_title="NOT_THE_SCP"), objects, timeout_s=10)
    assert scp.received == []


def test_dimse_transient_rejection_is_unavailable(objects: list[bytes]) -> None:
    ae = storage_ae()
    ae.maximum_associations = 1  # a second one is rejected (transient, local limit exceeded)
    server = StorageScp(ae)
    server.start()
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(SegmentationStorage)
    first = holder.associate("127.0.0.1", server.port, ae_title="STORE_SCP")
    try:
        assert first.is_established
        with pytest.raises(ExportUnavailable, match=r"^association rejected \(transient\): local limit exceeded$"):
            send_dimse(dimse(server.port), objects, timeout_s=10)
    finally:
        first.release()
        server.stop()


def test_dimse_no_context_for_the_sop_classes_is_refused(objects: list[bytes]) -> None:
    server = StorageScp(storage_ae(sop_classes=[CTImageStorage]))
    server.start()
    try:
        with pytest.raises(ExportRefused, match=r"^no presentation context accepted for Comprehensive 3D SR Storage"):
            send_dimse(dimse(server.port), objects, timeout_s=10)
        with pytest.raises(ExportRefused, match=r"^no presentation context accepted for Segmentation Storage$"):
            send_dimse(dimse(server.port), objects[1:], timeout_s=10)
    finally:
        server.stop()


def test_dimse_peer_abort_is_unavailable(scp: StorageScp, objects: list[bytes]) -> None:
    scp.abort = True
    with pytest.raises(ExportUnavailable, match=r"^association aborted by the destination$"):
        send_dimse(dimse(scp.port), objects, timeout_s=10)


def test_dimse_no_c_store_response_is_unavailable(objects: list[bytes]) -> None:
    server = StorageScp(storage_ae(), delay_s=1.0)
    server.start()
    try:
        with pytest.raises(ExportUnavailable, match=r"^timed out after 0.5 s waiting for the C-STORE response$"):
            send_dimse(dimse(server.port), objects, timeout_s=0.5)
    finally:
        server.stop()


def test_dimse_nothing_listening_is_unavailable(objects: list[bytes]) -> None:
    port = free_port()
    with pytest.raises(ExportUnavailable, match=f"^connection refused by 127.0.0.1:{port}$"):
        send_dimse(dimse(port), objects, timeout_s=5)


def test_dimse_silent_peer_times_out(objects: list[bytes]) -> None:
    with socket.socket() as listening:  # accepts (the kernel does), never answers the A-ASSOCIATE-RQ
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with pytest.raises(ExportUnavailable, match=r"^timed out after 0.5 s waiting for the association"):
            send_dimse(dimse(port), objects, timeout_s=0.5)


def test_dimse_unreadable_object_is_refused_before_associating(scp: StorageScp, objects: list[bytes]) -> None:
    with pytest.raises(ExportRefused, match=r"^object 2 of 2 is not a readable DICOM Part 10 file \(\w+\)$"):
        send_dimse(dimse(scp.port), [objects[0], b"not DICOM " + PATIENT_TEXT.encode()], timeout_s=5)
    assert scp.received == []
    assert send_dimse(dimse(scp.port), [], timeout_s=5) == 0


# --------------------------------------------------------------------------------- DICOMweb, scripted server
async def test_dicomweb_posts_one_multipart_request_with_the_destination_headers(
    stow_server: StowServer, objects: list[bytes]
) -> None:
    destination = dicomweb(stow_server.base + "/", {"Authorization": "Bearer s3cret", "X-Tenant": "alpha"})
    assert await send_dicomweb(destination, objects, timeout_s=5) == 2
    [request] = stow_server.requests
    assert request.path == "/dicomweb/studies"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["x-tenant"] == "alpha"
    assert request.headers["accept"] == "application/dicom+json"
    content_type = request.headers["content-type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body
    )
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 2
    assert [p.get_payload(decode=True) for p in parts] == objects


@pytest.mark.parametrize(
    ("answer", "error", "reason"),
    [
        (Answer(503, PATIENT_TEXT.encode(), "text/plain"), ExportUnavailable, "HTTP 503 from the destination"),
        (Answer(500, failed_sops(0xC000)), ExportUnavailable, None),
        (Answer(429), ExportUnavailable, "HTTP 429 from the destination"),
        (Answer(408), ExportUnavailable, "HTTP 408 from the destination"),
        (
            Answer(400, failed_sops(0xC000)),
            ExportRefused,
            "HTTP 400 from the destination: FailureReason 0xC000 (Cannot Understand) for 1 of 2 instances",
        ),
        (
            Answer(400, f"<html>{PATIENT_TEXT}</html>".encode(), "text/html"),
            ExportRefused,
            "HTTP 400 from the destination",
        ),
        (Answer(401), ExportRefused, "HTTP 401 from the destination"),
        (Answer(403), ExportRefused, "HTTP 403 from the destination"),
        (Answer(404), ExportRefused, "HTTP 404 from the destination"),
        (Answer(413), ExportRefused, "HTTP 413 from the destination"),
        (Answer(415), ExportRefused, "HTTP 415 from the destination"),
        (
            Answer(202, failed_sops(0xA700)),
            ExportUnavailable,
            "HTTP 202 from the destination: FailureReason 0xA700 (Out of Resources) for 1 of 2 instances",
        ),
        (
            Answer(202, failed_sops(0xC000)),
            ExportRefused,
            "HTTP 202 from the destination: FailureReason 0xC000 (Cannot Understand) for 1 of 2 instances",
        ),
        (
            Answer(202, failed_sops(0xA700, 0xC000)),
            ExportRefused,  # the 0xC000 object would fail again
            "HTTP 202 from the destination: FailureReason 0xA700 (Out of Resources) for 1, "
            "0xC000 (Cannot Understand) for 1 of 2 instances",
        ),
        (Answer(202, b"{}"), ExportRefused, "HTTP 202 from the destination: some instances were not stored"),
        (Answer(409, failed_sops(0x0111, 0xC000)), ExportRefused, None),
        (Answer(409), ExportRefused, "HTTP 409 from the destination"),
        (Answer(301), ExportRefused, "HTTP 301 from the destination, which is not a STOW-RS answer"),
    ],
)
async def test_dicomweb_answers(
    stow_server: StowServer, objects: list[bytes], answer: Answer, error: type[Exception], reason: str | None
) -> None:
    stow_server.answer = answer
    with pytest.raises(error) as caught:
        await send_dicomweb(dicomweb(stow_server.base), objects, timeout_s=5)
    text = str(caught.value)
    assert text == caught.value.reason  # type: ignore[attr-defined]
    if reason is not None:
        assert text.startswith(reason), text
    assert text.startswith(f"HTTP {answer.status} from the destination")
    assert PATIENT_TEXT not in text and "html" not in text and "1.2.3" not in text


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, b""),
        Answer(200, b'{"00081199": {"vr": "SQ", "Value": []}}'),
        Answer(409, failed_sops(0x0111, 0x0111)),  # already stored: a retry of delivered objects
        Answer(202, failed_sops(0x0111)),
        Answer(200, failed_sops(0x0111)),
    ],
)
async def test_dicomweb_success_and_duplicates(stow_server: StowServer, objects: list[bytes], answer: Answer) -> None:
    stow_server.answer = answer
    assert await send_dicomweb(dicomweb(stow_server.base), objects, timeout_s=5) == 2


async def test_dicomweb_nothing_listening_is_unavailable(objects: list[bytes]) -> None:
    port = free_port()
    with pytest.raises(ExportUnavailable, match=f"^connection refused by 127.0.0.1:{port}$"):
        await send_dicomweb(dicomweb(f"http://127.0.0.1:{port}/dicomweb"), objects, timeout_s=5)


async def test_dicomweb_slow_answer_times_out(stow_server: StowServer, objects: list[bytes]) -> None:
    stow_server.answer = Answer(200, delay_s=1.5)
    port = stow_server.server_address[1]
    with pytest.raises(ExportUnavailable, match=rf"^timed out after 0.3 s waiting for the answer of 127.0.0.1:{port}$"):
        await send_dicomweb(dicomweb(stow_server.base), objects, timeout_s=0.3)


async def test_dicomweb_hang_up_is_unavailable(stow_server: StowServer, objects: list[bytes]) -> None:
    stow_server.answer = Answer(hang_up=True)
    with pytest.raises(ExportUnavailable, match=r"^the exchange with 127.0.0.1:\d+ failed \(RemoteProtocolError\)$"):
        await send_dicomweb(dicomweb(stow_server.base), objects, timeout_s=5)


async def test_dicomweb_no_objects_sends_nothing(stow_server: StowServer) -> None:
    assert await send_dicomweb(dicomweb(stow_server.base), [], timeout_s=5) == 0
    assert stow_server.requests == []


# --------------------------------------------------------------------------------- storescp and Orthanc
def _job(op: str, destination: DicomwebDestination | DimseDestination, files: list[str], timeout_s: float = 10) -> Any:
    fields = destination.model_dump(mode="json", exclude={"headers"})
    return {"op": op, "destination": fields, "files": files, "timeout_s": timeout_s}


def test_storescp_receives_sr_and_seg(netns: Namespace, objects: list[bytes]) -> None:
    files = write_objects(objects, netns.work / "to-storescp")
    results = ns_send(
        netns,
        [
            _job("dimse", dimse(STORESCP_PORT, STORESCP_AE), files),
            _job("dimse", dimse(STORESCP_REFUSING_PORT, STORESCP_AE), files),
            _job("dimse", dimse(STORESCP_PORT + 10, STORESCP_AE), files),
        ],
    )
    assert results[0] == {"delivered": 2}
    # storescp --refuse writes its A-ASSOCIATE-RJ and closes at once: pynetdicom reads the rejection, or,
    # now and then, sees the connection closed first (then the send is tried again, as for any closed
    # connection). Rejections are told apart deterministically against Orthanc and the pynetdicom SCP.
    assert results[1] in (
        {"error": "ExportRefused", "reason": "association rejected (permanent): no reason given"},
        {"error": "ExportUnavailable", "reason": results[1].get("reason")},
    ), results[1]
    if results[1]["error"] == "ExportUnavailable":
        assert "closed the connection" in results[1]["reason"], results[1]
    assert results[2] == {
        "error": "ExportUnavailable",
        "reason": f"connection refused by 127.0.0.1:{STORESCP_PORT + 10}",
    }
    stored = sorted(netns.storescp_dir.iterdir())
    assert len(stored) == 2, stored
    assert sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in stored) == sorted(sop_uids(objects))


def test_orthanc_stow_rs_delivers_once(netns: Namespace, objects: list[bytes]) -> None:
    files = write_objects(objects, netns.work / "to-orthanc-stow")
    base = f"http://127.0.0.1:{ORTHANC_HTTP_PORT}"
    destination = dicomweb(f"{base}/dicom-web")
    uids = sop_uids(objects)
    results = ns_send(
        netns,
        [
            _job("dicomweb", destination, files),
            {"op": "stow", "url": f"{base}/dicom-web/studies", "files": files},  # the same instances again
            _job("dicomweb", destination, files),  # a retry: counts as delivered
            _job("dicomweb", dicomweb(f"{base}/no-such-dicomweb"), files),
            {"op": "get", "url": f"{base}/instances?expand"},
        ],
    )
    assert results[0] == {"delivered": 2}
    assert results[1] == {"status": 200, "failure_reasons": None}  # Orthanc 1.10 + plugin 1.7: 200, one copy kept
    assert results[2] == {"delivered": 2}
    assert results[3] == {"error": "ExportRefused", "reason": "HTTP 404 from the destination"}
    held = [i["MainDicomTags"]["SOPInstanceUID"] for i in results[4]["json"]]
    assert sorted(u for u in held if u in uids) == sorted(uids)  # exactly one copy of each


def test_orthanc_c_store_delivers_once(netns: Namespace) -> None:
    objects = build_objects()  # a study of its own: Orthanc's instance list tells the two tests apart
    files = write_objects(objects, netns.work / "to-orthanc-dimse")
    uids = sop_uids(objects)
    results = ns_send(
        netns,
        [
            _job("dimse", dimse(ORTHANC_DICOM_PORT, ORTHANC_AE), files),
            _job("dimse", dimse(ORTHANC_DICOM_PORT, ORTHANC_AE), files),  # again: Orthanc keeps one copy
            _job("dimse", dimse(ORTHANC_DICOM_PORT, "NOT_ORTHANC"), files),
            {"op": "get", "url": f"http://127.0.0.1:{ORTHANC_HTTP_PORT}/instances?expand"},
        ],
    )
    assert results[0] == {"delivered": 2}
    assert results[1] == {"delivered": 2}
    assert results[2] == {
        "error": "ExportRefused",
        "reason": "association rejected (permanent): called AE title not recognised",
    }
    held = [i["MainDicomTags"]["SOPInstanceUID"] for i in results[3]["json"]]
    assert sorted(u for u in held if u in uids) == sorted(uids)  # exactly one copy of each


def test_threads_are_not_left_behind() -> None:
    """pynetdicom's association threads all ended (released or aborted) after the sends above."""
    lingering = [t.name for t in threading.enumerate() if t.name.startswith("RequestorThread")]
    assert lingering == []
