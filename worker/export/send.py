"""Send result objects (DICOM Part 10 bytes: an SR, SEGs) to one export destination.

* :func:`send_dicomweb`: one STOW-RS request (PS3.18 10.5) with every object, to ``{url}/studies``;
* :func:`send_dimse`: one association, one C-STORE per object (pynetdicom), then release.

Both return how many objects the destination accepted (all of them) or raise :class:`ExportUnavailable`
(transient: worth retrying) or :class:`ExportRefused` (permanent). A reason names the remote's answer only:
HTTP or DIMSE status codes and their standard meaning, exception class names, the destination's host and
port. It never holds a response body, a library's message or a DICOM attribute value (a peer's
ErrorComment may quote patient data).

STOW-RS: a 2xx answer without failed instances is success (a 202 without a FailedSOPSequence is not).
When every failed instance has FailureReason 0x0111 (duplicate SOP instance), in a 2xx or a 409, all
count as delivered, so a retry of objects already stored succeeds. Otherwise failures of a 2xx that are
all 0xA7xx (out of resources) are transient, any other FailureReason is permanent; a 409 is permanent.
408, 429 and 5xx are transient, other 4xx (and 1xx, 3xx: redirects are not followed) permanent; transport
errors (refused, timed out, reset) are transient.

C-STORE: each object's SOP class is proposed with the object's own transfer syntax, Explicit and Implicit
VR Little Endian. Objects are sent as read; where the destination accepted the SOP class only in the other
uncompressed little-endian syntax (explicit <-> implicit VR), pynetdicom re-encodes the data set, which
changes no value; an object whose syntax cannot be converted to the accepted one is refused before
anything is sent. Success and warning statuses count as accepted, as does 0x0111 (already stored);
0xA7xx and 0x0213 (resource limitation) are transient, other failures permanent. The client socket has
TCP_NODELAY from before it connects: pynetdicom has no public hook for the requestor's socket, so the
application entity's ``_create_socket`` is overridden (it also keeps why a connection failed, which
pynetdicom only logs).
"""

from __future__ import annotations

import errno
import functools
import json
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from ssl import SSLContext
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category
from pynetdicom.transport import AddressInformation, AssociationSocket

from radstream.destinations import DicomwebDestination, DimseDestination
from radstream.errors import FailureReason

DUPLICATE_SOP_INSTANCE = FailureReason.DUPLICATE_SOP_INSTANCE  # 0x0111, a STOW-RS reason and a C-STORE status
RESOURCE_LIMITATION = 0x0213
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_MAX_ANSWER_BYTES = 1 << 20  # of a STOW-RS answer, read for its status codes only
_TRANSIENT_HTTP = frozenset({408, 429})


class ExportError(Exception):
    """An export that did not deliver; ``reason`` is a short sentence naming the remote's answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ExportUnavailable(ExportError):
    """Transient: the destination may take the objects later (the caller retries)."""


class ExportRefused(ExportError):
    """Permanent: sending the same objects again will not succeed."""


def _seconds(timeout_s: float) -> str:
    return f"{timeout_s:g} s"


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError with an errno in the chain of causes of ``exc`` (the one that says what happened)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and (current.errno is not None or isinstance(current, TimeoutError)):
            return current
        current = current.__cause__ or current.__context__
    return None


def _connect_reason(error: BaseException | None, where: str, timeout_s: float) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(error, TimeoutError):
        return f"timed out after {_seconds(timeout_s)} connecting to {where}"
    if isinstance(error, socket.gaierror):
        return f"the host name of {where} could not be resolved"
    if isinstance(error, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{where} is unreachable"
    name = type(error).__name__ if error is not None else "no error given"
    return f"could not connect to {where} ({name})"


def _status_meaning(code: int) -> str:
    """The standard meaning of a storage status (PS3.4 B.2.3, PS3.7 C), as pynetdicom tabulates it."""
    entry = STORAGE_SERVICE_CLASS_STATUS.get(code)
    if entry is None or not entry[1]:
        return "Success" if code == 0 else "unknown status"
    return entry[1].removeprefix("Refused: ")


def _code(code: int) -> str:
    return f"0x{code:04X} ({_status_meaning(code)})"


# ------------------------------------------------------------------------------------------- STOW-RS
def _multipart(objects: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of ``application/dicom`` parts, and its boundary (found in no object)."""
    while True:
        boundary = secrets.token_hex(16)
        marker = b"--" + boundary.encode()
        if not any(marker in data for data in objects):
            break
    parts: list[bytes] = []
    for data in objects:
        parts += [marker, b"\r\nContent-Type: application/dicom\r\n\r\n", data, b"\r\n"]
    parts += [marker, b"--\r\n"]
    return b"".join(parts), boundary


def _failure_reasons(body: bytes) -> list[int | None] | None:
    """FailureReason of each FailedSOPSequence item of a DICOM JSON answer (None for an item without one);
    None when the answer has no FailedSOPSequence to read."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        return None
    failed = document.get(_FAILED_SOP_SEQUENCE)
    if not isinstance(failed, dict):
        return None
    items = failed.get("Value", [])
    if not isinstance(items, list):
        return None
    reasons: list[int | None] = []
    for item in items:
        code = None
        reason = item.get(_FAILURE_REASON) if isinstance(item, dict) else None
        values = reason.get("Value") if isinstance(reason, dict) else None
        if isinstance(values, list) and values and isinstance(values[0], int) and not isinstance(values[0], bool):
            code = values[0]
        reasons.append(code)
    return reasons


def _summary(reasons: Sequence[int | None], total: int) -> str:
    """E.g. ``FailureReason 0xC000 (Cannot Understand) for 1 of 2 instances``."""
    counts: dict[int | None, int] = {}
    for code in reasons:
        counts[code] = counts.get(code, 0) + 1
    parts = [
        f"{'no FailureReason' if code is None else _code(code)} for {count}"
        for code, count in sorted(counts.items(), key=lambda kv: -1 if kv[0] is None else kv[0])
    ]
    text = ", ".join(parts)
    return f"FailureReason {text} of {total} instances" if text else ""


def _is_out_of_resources(code: int | None) -> bool:
    return code is not None and 0xA700 <= code <= 0xA7FF


def _stow_outcome(status: int, reasons: list[int | None] | None, total: int) -> int:
    """The number of objects delivered, given the HTTP status and the FailureReasons of a STOW-RS answer."""
    failures = reasons or []
    duplicates_only = bool(failures) and all(code == DUPLICATE_SOP_INSTANCE for code in failures)
    answer = f"HTTP {status} from the destination"
    detail = f"{answer}: {_summary(failures, total)}" if failures else answer
    if 200 <= status < 300:
        if duplicates_only or (not failures and status != 202):
            return total
        if not failures:
            raise ExportRefused(f"{answer}: some instances were not stored (no FailureReason given)")
        if all(_is_out_of_resources(code) or code == DUPLICATE_SOP_INSTANCE for code in failures):
            raise ExportUnavailable(detail)
        raise ExportRefused(detail)
    if status == 409:
        if duplicates_only:
            return total
        raise ExportRefused(detail)
    if status in _TRANSIENT_HTTP or status >= 500:
        raise ExportUnavailable(detail)
    if 400 <= status < 500:
        raise ExportRefused(detail)
    raise ExportRefused(f"{answer}, which is not a STOW-RS answer")


def _http_reason(exc: httpx.TransportError, where: str, timeout_s: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"timed out after {_seconds(timeout_s)} connecting to {where}"
    if isinstance(exc, httpx.WriteTimeout):
        return f"timed out after {_seconds(timeout_s)} sending to {where}"
    if isinstance(exc, httpx.ReadTimeout):
        return f"timed out after {_seconds(timeout_s)} waiting for the answer of {where}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {_seconds(timeout_s)}"
    if isinstance(exc, httpx.ConnectError):
        return _connect_reason(_os_error(exc), where, timeout_s)
    return f"the exchange with {where} failed ({type(exc).__name__})"


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of the answer (the rest is not needed to read status codes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context for every export (building one loads the CA bundle: tens of ms of CPU per
    request otherwise), on the system's trust store, where an operator adds a hospital's own CA."""
    return ssl.create_default_context()


async def send_dicomweb(destination: DicomwebDestination, objects: list[bytes], *, timeout_s: float = 30.0) -> int:
    """STOW-RS every object in one request to ``{destination.url}/studies``; the number delivered."""
    if not objects:
        return 0
    try:
        url = httpx.URL(f"{destination.url}/studies")
    except httpx.InvalidURL:
        raise ExportRefused("the destination URL is not valid") from None
    where = _where(url.host, url.port or (443 if url.scheme == "https" else 80))
    body, boundary = _multipart(objects)
    headers = httpx.Headers(destination.header_values())
    headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers["Accept"] = "application/dicom+json"
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), verify=_tls()) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            status = response.status_code
            try:
                answer = await _read_some(response, _MAX_ANSWER_BYTES)
            except httpx.DecodingError:
                answer = b""
    except httpx.TransportError as exc:
        raise ExportUnavailable(_http_reason(exc, where, timeout_s)) from None
    except httpx.HTTPError as exc:
        raise ExportUnavailable(f"the exchange with {where} failed ({type(exc).__name__})") from None
    return _stow_outcome(status, _failure_reasons(answer), len(objects))


# ------------------------------------------------------------------------------------------- C-STORE
class _TcpSocket(socket.socket):
    """A client socket that keeps the error of a failed ``connect`` (pynetdicom logs it and drops it)."""

    connect_error: OSError | None = None

    def connect(self, address: Any, /) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise


class _RequestorSocket(AssociationSocket):
    """pynetdicom's requestor socket, made with TCP_NODELAY (before it connects) as a :class:`_TcpSocket`."""

    tcp: _TcpSocket | None = None

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        # As pynetdicom's own, plus TCP_NODELAY: without it every small PDU waits for a delayed ACK.
        sock = _TcpSocket(address.address_family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.assoc.network_timeout is not None:
            sock.settimeout(self.assoc.network_timeout)
        sock.bind(address.as_tuple)
        self._is_connected = False
        self.tcp = sock
        return sock


class _RequestorAE(ApplicationEntity):
    """An application entity whose associations use a :class:`_RequestorSocket`."""

    last_socket: _RequestorSocket | None = None

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: tuple[SSLContext, str] | None
    ) -> AssociationSocket:
        sock = _RequestorSocket(assoc, address=address)
        sock.tls_args = tls_args
        self.last_socket = sock
        return sock


@dataclass
class _Watch:
    """What pynetdicom does not keep: whether the peer sent an A-ABORT, whether this side sent one."""

    peer_aborted: bool = False
    sent_abort: bool = False

    def on_received(self, event: Event) -> None:
        if isinstance(event.pdu, A_ABORT_RQ):
            self.peer_aborted = True

    def on_sent(self, event: Event) -> None:
        if isinstance(event.pdu, A_ABORT_RQ):
            self.sent_abort = True

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_PDU_RECV, self.on_received), (evt.EVT_PDU_SENT, self.on_sent)]

    def ended(self, waited_s: float, timeout_s: float, waiting_for: str) -> ExportUnavailable:
        """Why the association ended while waiting ``waited_s`` for ``waiting_for``."""
        if self.peer_aborted:
            return ExportUnavailable("association aborted by the destination")
        if waited_s >= timeout_s:
            return ExportUnavailable(f"timed out after {_seconds(timeout_s)} waiting for {waiting_for}")
        if self.sent_abort:  # pynetdicom aborts on a PDU it cannot decode or does not expect
            return ExportUnavailable("association aborted: the destination's answer was not valid DICOM")
        return ExportUnavailable("association aborted: the destination closed the connection")


@dataclass(frozen=True)
class _Object:
    dataset: Dataset
    sop_class: UID
    transfer_syntax: UID


def _class_name(uid: UID) -> str:
    """The standard name of a SOP class (never the UID of a private one)."""
    return uid.name if uid.is_valid and uid.name != str(uid) else "a SOP class not in the DICOM standard"


def _read(objects: Sequence[bytes]) -> list[_Object]:
    read: list[_Object] = []
    for index, data in enumerate(objects, 1):
        where = f"object {index} of {len(objects)}"
        try:
            dataset = pydicom.dcmread(BytesIO(data))
            sop_class = UID(str(dataset.SOPClassUID))
            syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
        except AttributeError:
            raise ExportRefused(f"{where} has no SOP Class UID or Transfer Syntax UID") from None
        except Exception as exc:  # pydicom raises many kinds on malformed bytes
            raise ExportRefused(f"{where} is not a readable DICOM Part 10 file ({type(exc).__name__})") from None
        read.append(_Object(dataset, sop_class, syntax))
    return read


def _contexts(objects: Sequence[_Object]) -> list[PresentationContext]:
    """One context per SOP class: the objects' own transfer syntaxes, then Explicit and Implicit VR LE."""
    syntaxes: dict[str, list[str]] = {}
    for obj in objects:
        offered = syntaxes.setdefault(obj.sop_class, [])
        for syntax in (obj.transfer_syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if syntax not in offered:
                offered.append(syntax)
    for offered in syntaxes.values():  # the objects' own first, the two fallbacks last
        offered.sort(key=lambda s: s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    return [build_context(sop_class, offered) for sop_class, offered in syntaxes.items()]


def _convertible(own: UID, accepted: UID) -> bool:
    """Whether pynetdicom sends data set in ``own`` over a context of ``accepted`` (its own rule)."""
    if own == accepted:
        return True
    return not own.is_compressed and not accepted.is_compressed and own.is_little_endian == accepted.is_little_endian


def _check_contexts(assoc: Association, objects: Sequence[_Object]) -> None:
    """ExportRefused unless every object has an accepted context it can be sent over."""
    for obj in objects:
        accepted = [UID(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == obj.sop_class]
        if not accepted:
            raise ExportRefused(f"no presentation context accepted for {_class_name(obj.sop_class)}")
        if not any(_convertible(obj.transfer_syntax, syntax) for syntax in accepted):
            raise ExportRefused(
                f"{_class_name(obj.sop_class)} was accepted only in {accepted[0].name}, "
                f"and an object in {obj.transfer_syntax.name} is not converted"
            )


def _reject_meaning(primitive: Any) -> str:
    """The standard meaning of an A-ASSOCIATE-RJ's source and diagnostic (pynetdicom's table, PS3.8 9.3.4)."""
    text = str(primitive.reason_str)
    if not text or text.startswith("(") or text == "Reserved":
        return f"source {primitive.result_source}, diagnostic {primitive.diagnostic}"
    return text[0].lower() + text[1:]


def _association_failure(
    assoc: Association,
    ae: _RequestorAE,
    watch: _Watch,
    objects: Sequence[_Object],
    where: str,
    timeout_s: float,
    elapsed_s: float,
) -> ExportError:
    """Why ``assoc`` was not established, as the exception to raise."""
    tcp = ae.last_socket.tcp if ae.last_socket is not None else None
    if tcp is not None and tcp.connect_error is not None:
        return ExportUnavailable(_connect_reason(tcp.connect_error, where, timeout_s))
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        if answer.result == 0x02:
            return ExportUnavailable(f"association rejected (transient): {_reject_meaning(answer)}")
        return ExportRefused(f"association rejected (permanent): {_reject_meaning(answer)}")
    if answer is not None and answer.result == 0x00:  # accepted, but none of the contexts: pynetdicom aborted
        names = sorted({_class_name(obj.sop_class) for obj in objects})
        return ExportRefused(f"no presentation context accepted for {' or '.join(names)}")
    return watch.ended(elapsed_s, timeout_s, "the association to be accepted")


def _check_status(status: Dataset, watch: _Watch, timeout_s: float, elapsed_s: float) -> None:
    if "Status" not in status:
        raise watch.ended(elapsed_s, timeout_s, "the C-STORE response")
    code = int(status.Status)
    if code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING) or code == DUPLICATE_SOP_INSTANCE:
        return
    if _is_out_of_resources(code) or code == RESOURCE_LIMITATION:
        raise ExportUnavailable(f"C-STORE status {_code(code)}")
    raise ExportRefused(f"C-STORE status {_code(code)}")


def send_dimse(destination: DimseDestination, objects: list[bytes], *, timeout_s: float = 30.0) -> int:
    """C-STORE every object over one association with the destination; the number delivered."""
    if not objects:
        return 0
    read = _read(objects)
    where = _where(destination.host, destination.port)
    ae = _RequestorAE(ae_title=destination.calling_ae_title)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    watch = _Watch()
    started = time.monotonic()
    try:
        return _store(ae, destination, read, watch, where, timeout_s, started)
    finally:  # pynetdicom leaves the socket open on some failures (an ACSE timeout, for one)
        if ae.last_socket is not None and ae.last_socket.tcp is not None:
            ae.last_socket.tcp.close()


def _store(
    ae: _RequestorAE,
    destination: DimseDestination,
    read: Sequence[_Object],
    watch: _Watch,
    where: str,
    timeout_s: float,
    started: float,
) -> int:
    """Associate, check the contexts, C-STORE each object, release (abort on any failure)."""
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            _contexts(read),
            ae_title=destination.ae_title,
            evt_handlers=watch.handlers(),
        )
    except socket.gaierror:
        raise ExportUnavailable(f"the host name of {where} could not be resolved") from None
    if not assoc.is_established:
        raise _association_failure(assoc, ae, watch, read, where, timeout_s, time.monotonic() - started)
    delivered = 0
    try:
        _check_contexts(assoc, read)
        for obj in read:
            if not assoc.is_established:
                raise watch.ended(0.0, timeout_s, "the C-STORE response")
            started = time.monotonic()
            try:
                status = assoc.send_c_store(obj.dataset)
            except RuntimeError:  # the association ended meanwhile
                raise watch.ended(0.0, timeout_s, "the C-STORE response") from None
            except (ValueError, AttributeError) as exc:  # pynetdicom could not encode it for the context
                raise ExportRefused(f"an object could not be encoded for sending ({type(exc).__name__})") from None
            _check_status(status, watch, timeout_s, time.monotonic() - started)
            delivered += 1
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    assoc.release()
    return delivered
