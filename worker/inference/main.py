"""``radstream worker``: build the clients, start one batcher per model, consume until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack

from radstream.dicom import quiet_dicom_libraries
from radstream.settings import Settings
from radstream.telemetry import BufferedTelemetry
from worker.inference.batcher import Batcher
from worker.inference.client import TritonClient
from worker.inference.consumer import InferenceWorker
from worker.models.spec import load_specs
from worker.stages.context import stage_context

log = logging.getLogger("radstream.worker")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> int:
    quiet_dicom_libraries()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    specs = {spec.name: spec for spec in load_specs(settings.model_repository)}
    async with AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(stage_context(settings))
        triton = await stack.enter_async_context(
            TritonClient(
                settings.triton_grpc_url,
                inference_timeout_s=settings.triton_request_timeout_s,
                readiness_timeout_s=settings.triton_readiness_timeout_s,
                shared_memory=settings.triton_shared_memory,
            )
        )
        batchers = {
            name: await stack.enter_async_context(
                Batcher(
                    triton,
                    spec,
                    max_wait_s=settings.batcher_max_wait_s,
                    max_in_flight=settings.batcher_max_in_flight,
                    request_timeout_s=settings.triton_request_timeout_s,
                )
            )
            for name, spec in specs.items()
        }
        # Long-running, like the gateway: events leave in one PutRecords per interval, and close() flushes
        # the rest when the worker stops.
        telemetry = BufferedTelemetry(ctx.telemetry)
        await telemetry.start()
        stack.push_async_callback(telemetry.close)
        queue_url = (await ctx.sqs.get_queue_url(QueueName=settings.inference_queue))["QueueUrl"]
        worker = InferenceWorker(
            settings,
            sqs=ctx.sqs,
            sfn=ctx.sfn,
            images=ctx.images,
            telemetry=telemetry,
            batchers=batchers,
            specs=specs,
            queue_url=queue_url,
        )
        log.info("worker consuming %s for models %s", settings.inference_queue, ", ".join(specs))
        await worker.run(stop)
        log.info("worker stopped after %d studies", worker.completed)
    return 0
