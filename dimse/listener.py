"""The pynetdicom application entity: who may associate, with what, within which limits, and the handlers.

pynetdicom runs each association in a thread of its own; every storage call is handed to the service's
asyncio loop (``asyncio.run_coroutine_threadsafe``) and the C-STORE response waits for its answer, so
success (0x0000) is sent only after S3 confirmed the write. Accepted sockets get TCP_NODELAY: without it
each small DIMSE response waited for a delayed ACK (Nagle cost 10-14x on C-STORE throughput here).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.acse import ACSE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dimse.association import AssociationBatch
from dimse.part10 import part10
from dimse.peers import REJECT_BUSY, REJECT_CALLED_AE, REJECT_CALLING_AE, PeerTable
from radstream.aws.s3 import ObjectStore
from radstream.dicom import KNOWN_TRANSFER_SYNTAXES
from radstream.errors import FailureReason, WarningReason, describe
from radstream.ingest.commit import Committer
from radstream.ingest.outcome import FailedInstance
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry, TelemetryEvent

log = logging.getLogger("radstream.dimse")

SUCCESS = 0x0000
# The most common first: of the syntaxes a requestor proposes, the SCP accepts the first on this list.
PREFERRED_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
TRANSFER_SYNTAXES = [*PREFERRED_SYNTAXES, *sorted(KNOWN_TRANSFER_SYNTAXES - set(PREFERRED_SYNTAXES))]
REASONS = {REJECT_CALLING_AE: "calling_ae", REJECT_CALLED_AE: "called_ae", REJECT_BUSY: "busy"}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.associations = PromCounter(
            "radstream_dimse_associations_total",
            "associations by what became of them (accepted, released, aborted, rejected)",
            ["event", "reason"],
            registry=self.registry,
        )
        self.instances = PromCounter(
            "radstream_dimse_instances_total",
            "C-STORE requests by peer and status",
            ["peer", "status"],
            registry=self.registry,
        )
        self.bytes = PromCounter(
            "radstream_dimse_stored_bytes_total", "bytes of instances stored by peer", ["peer"], registry=self.registry
        )


@dataclass
class _Peers:
    """Associations per calling AE and host, bounded by ``per_peer``."""

    per_peer: int
    active: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, peer: tuple[str, str]) -> bool:
        with self.lock:
            if self.active[peer] >= self.per_peer:
                return False
            self.active[peer] += 1
            return True

    def give_back(self, peer: tuple[str, str]) -> None:
        with self.lock:
            self.active[peer] -= 1
            if self.active[peer] <= 0:
                del self.active[peer]


class Listener:
    def __init__(
        self,
        settings: Settings,
        peers: PeerTable,
        images: ObjectStore,
        committer: Committer,
        telemetry: BufferedTelemetry,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.settings = settings
        self.peers = peers
        self.images = images
        self.committer = committer
        self.telemetry = telemetry
        self.loop = loop
        self.metrics = Metrics()
        self.batches: dict[int, AssociationBatch] = {}
        self._limits = _Peers(settings.dimse_max_associations_per_peer)
        self._orphans: list[AssociationBatch] = []  # ended associations whose manifest is still to write
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._application_entity()

    # ------------------------------------------------------------------------------------------ set-up
    def _application_entity(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.dimse_ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, PREFERRED_SYNTAXES)
        ae.require_called_aet = True  # 0x07 for any other called AE title
        ae.maximum_associations = s.dimse_max_associations
        ae.maximum_pdu_size = s.dimse_max_pdu_bytes
        ae.acse_timeout = s.dimse_acse_timeout_s
        ae.dimse_timeout = s.dimse_dimse_timeout_s
        ae.network_timeout = s.dimse_network_timeout_s
        return ae

    def start(self) -> tuple[str, int]:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        address = (self.settings.dimse_host, self.settings.dimse_port)
        server = self.ae.start_server(address, block=False, evt_handlers=handlers)  # type: ignore[arg-type]
        assert server is not None  # block=False returns the running server
        self._server = server
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop accepting, end the associations still open (abort: their manifests are written), close."""
        if self._server is not None:
            for assoc in list(self.ae.active_associations):
                assoc.abort()
            self._server.shutdown()
            self._server = None

    # -------------------------------------------------------------------------------------- the bridge
    def _call(self, coroutine: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def _emit(self, event: TelemetryEvent) -> None:
        self.loop.call_soon_threadsafe(self.telemetry.emit, event)

    # ---------------------------------------------------------------------------------------- handlers
    def _on_connection(self, event: evt.Event) -> None:
        """Before the association request is read: TCP_NODELAY, and our acceptance check in the ACSE."""
        assoc = event.assoc
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setattr(assoc, "_radstream_listener", self)  # noqa: B010 - read by _CheckingACSE
        assoc.acse.__class__ = _CheckingACSE

    def verdict(self, assoc: Any, calling_ae: str, called_ae: str) -> tuple[int, int, int] | None:
        """None to go on negotiating, else the A-ASSOCIATE-RJ (result, source, reason)."""
        if called_ae.strip() != self.settings.dimse_ae_title:
            return REJECT_CALLED_AE
        address = str(assoc.requestor.address)
        tenant = self.peers.tenant_for(calling_ae, address)
        if tenant is None:
            return REJECT_CALLING_AE
        peer = (calling_ae.strip(), address)
        if not self._limits.take(peer):
            return REJECT_BUSY
        assoc._radstream_peer = peer
        assoc._radstream_tenant = tenant
        return None

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        tenant = getattr(assoc, "_radstream_tenant", None)
        if tenant is None:
            return
        self.batches[id(assoc)] = AssociationBatch(
            self.images, self.committer, tenant, flush_instances=self.settings.dimse_flush_instances
        )
        self.metrics.associations.labels("accepted", "").inc()

    def _on_rejected(self, event: evt.Event) -> None:
        reason = REASONS.get(getattr(event.assoc, "_radstream_rejected", (0, 0, 0)), "other")
        self.metrics.associations.labels("rejected", reason).inc()
        log.info("association from %s rejected: %s", event.assoc.requestor.ae_title, reason)
        tenant = getattr(event.assoc, "_radstream_tenant", None) or "-"
        self._emit(TelemetryEvent(stage="association", tenant=tenant, outcome="failed", reason=f"rejected: {reason}"))

    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset:
        assoc = event.assoc
        batch = self.batches.get(id(assoc))
        peer = getattr(assoc, "_radstream_peer", ("?", "?"))[0]
        request = cast(C_STORE, event.request)
        sop_class, sop_instance = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        status = Dataset()
        if batch is None:  # not accepted by us: cannot happen once negotiated
            status.Status = FailureReason.PROCESSING_FAILURE
            return status
        try:
            instance = part10(
                cast(Any, request.DataSet).getvalue(),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax_uid=str(event.context.transfer_syntax),
                source_ae=str(assoc.requestor.ae_title),
            )
            result = self._call(batch.store(instance.body, instance.sha256), self.settings.dimse_store_timeout_s)
        except FutureTimeout:
            result = FailedInstance(FailureReason.OUT_OF_RESOURCES, "storage did not answer in time; send again")
        except Exception as exc:  # its message may quote DICOM values: the class and place only
            log.error("C-STORE of an instance failed: %s", describe(exc))
            result = FailedInstance(FailureReason.PROCESSING_FAILURE, "the instance could not be stored")
        if isinstance(result, FailedInstance):
            status.Status = int(result.reason)
            status.ErrorComment = result.detail[:64]
        else:
            warned = bool(result.header.warnings)
            status.Status = int(WarningReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS) if warned else SUCCESS
            self.metrics.bytes.labels(peer).inc(result.size)
        self.metrics.instances.labels(peer, f"0x{int(status.Status):04X}").inc()
        return status

    def _on_end(self, event: evt.Event) -> None:
        """Released or aborted: write the manifest of what the association stored."""
        what = "released" if event.event is evt.EVT_RELEASED else "aborted"
        self._finish(event.assoc, what)

    def _on_close(self, event: evt.Event) -> None:
        self._finish(event.assoc, "closed")  # the connection dropped without a release or an abort
        peer = getattr(event.assoc, "_radstream_peer", None)
        if peer is not None:
            self._limits.give_back(peer)
            setattr(event.assoc, "_radstream_peer", None)  # noqa: B010 - given back once

    def _finish(self, assoc: Any, what: str) -> None:
        batch = self.batches.pop(id(assoc), None)
        if batch is None:
            return
        self.metrics.associations.labels(what, "").inc()
        try:
            written = self._call(batch.flush(), self.settings.dimse_store_timeout_s)
        except Exception as exc:
            log.error("manifest of association %s not written: %s", batch.request_id, describe(exc))
            written = False
        if not written:  # kept: the flush loop writes it when storage is back
            self.loop.call_soon_threadsafe(self._orphans.append, batch)
        log.info("association %s: %d instances stored", what, batch.stored)
        self._emit(
            TelemetryEvent(stage="association", tenant=batch.tenant, instances=batch.stored, outcome="ok", reason=what)
        )

    # ------------------------------------------------------------------------------ manifests of quiet
    async def flush_loop(self) -> None:
        """Every second: the manifest of each open association quiet for ``dimse_flush_quiet_s``, and of
        ended ones whose manifest could not be written."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.dimse_flush_quiet_s / 2))
            now = time.monotonic()
            for batch in list(self.batches.values()):
                if batch.pending and now - batch.last_store >= self.settings.dimse_flush_quiet_s:
                    await batch.flush()
            for batch in list(self._orphans):
                if await batch.flush():
                    self._orphans.remove(batch)

    async def flush_all(self) -> None:
        for batch in [*self.batches.values(), *self._orphans]:
            await batch.flush()


class _CheckingACSE(ACSE):
    """pynetdicom's ACSE with the listener's check first: calling AE and host against the peers, the
    called AE title, the per-peer limit. Rejections use the A-ASSOCIATE-RJ reasons of PS3.8 9.3.4."""

    def _negotiate_as_acceptor(self) -> None:
        listener: Listener = getattr(self.assoc, "_radstream_listener")  # noqa: B009 - set at connection
        request = cast(A_ASSOCIATE, self.requestor.primitive)
        self.requestor.ae_title = request.calling_ae_title
        verdict = listener.verdict(self.assoc, str(request.calling_ae_title), str(request.called_ae_title))
        if verdict is not None:
            setattr(self.assoc, "_radstream_rejected", verdict)  # noqa: B010 - read by the EVT_REJECTED handler
            self.send_reject(*verdict)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()
