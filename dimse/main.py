"""``radstream dimse``: the C-STORE SCP until SIGTERM. It opens its clients, listens on
RADSTREAM_DIMSE_HOST:RADSTREAM_DIMSE_PORT as RADSTREAM_DIMSE_AE_TITLE, serves Prometheus metrics on
RADSTREAM_DIMSE_METRICS_PORT, and at a stop writes the manifests of the associations still open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import start_http_server

from dimse.listener import Listener
from dimse.peers import peer_table
from dimse.recovery import sweep_forever
from radstream.clients import open_clients
from radstream.dicom import keep_values_out_of_logs, read_values_unvalidated
from radstream.ingest.commit import Committer
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry

log = logging.getLogger("radstream.dimse")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> int:
    read_values_unvalidated()
    keep_values_out_of_logs()
    tenants = list(dict.fromkeys(settings.tenant_keys().values()))
    peers = peer_table(settings.dimse_peers, tenants, production=settings.environment == "production")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_clients(settings) as clients:
        telemetry = BufferedTelemetry(clients.telemetry)
        await telemetry.start()
        committer = Committer(clients.images, clients.status, retry_after_s=settings.storage_retry_after_s)
        listener = Listener(settings, peers, clients.images, committer, telemetry, loop)
        host, port = listener.start()
        metrics_server, _ = start_http_server(
            settings.dimse_metrics_port, addr=settings.dimse_host, registry=listener.metrics.registry
        )
        flushing = asyncio.create_task(listener.flush_loop(), name="dimse-flush")
        sweeping = asyncio.create_task(sweep_forever(clients.images, committer), name="dimse-recovery")
        scope = "any calling AE" if peers.open else "the configured peers"
        log.info("DIMSE listener %s on %s:%d, accepting %s", settings.dimse_ae_title, host, port, scope)
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(listener.stop)  # open associations end; their manifests are written
            for task in (flushing, sweeping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await listener.flush_all()
            metrics_server.shutdown()
            await telemetry.close()
    return 0
