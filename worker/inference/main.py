"""``radstream worker``: open the clients, start the inference service (one batcher per model), consume
until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from radstream.clients import open_clients
from radstream.dicom import keep_values_out_of_logs, read_values_unvalidated
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry
from worker.inference.consumer import InferenceWorker
from worker.inference.service import InferenceService
from worker.inference.triton.client import TritonClient
from worker.models.spec import load_specs

log = logging.getLogger("radstream.worker")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> int:
    read_values_unvalidated()
    keep_values_out_of_logs()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    specs = load_specs(settings.model_repository)
    async with AsyncExitStack() as stack:
        clients = await stack.enter_async_context(open_clients(settings))
        triton = await stack.enter_async_context(
            TritonClient(
                settings.triton_grpc_url,
                inference_timeout_s=settings.triton_request_timeout_s,
                readiness_timeout_s=settings.triton_readiness_timeout_s,
                shared_memory=settings.triton_shared_memory,
            )
        )
        service = await stack.enter_async_context(
            InferenceService(
                triton,
                specs,
                max_wait_s=settings.batcher_max_wait_s,
                max_in_flight=settings.batcher_max_in_flight,
                request_timeout_s=settings.triton_request_timeout_s,
            )
        )
        # Long-running, like the gateway: events leave in one PutRecords per interval, and close() flushes
        # the rest when the worker stops.
        telemetry = BufferedTelemetry(clients.telemetry)
        await telemetry.start()
        stack.push_async_callback(telemetry.close)
        worker = InferenceWorker(
            settings,
            queue=await clients.queue(settings.inference_queue),
            tasks=clients.stepfunctions,
            images=clients.images,
            telemetry=telemetry,
            batchers=service.batchers,
            specs={spec.name: spec for spec in service.specs},
        )
        log.info("worker consuming %s for models %s", settings.inference_queue, ", ".join(service.batchers))
        await worker.run(stop)
        log.info("worker stopped after %d studies", worker.completed)
    return 0
