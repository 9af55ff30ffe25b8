"""Triton answering INTERNAL to some real inference requests: a gRPC proxy on loopback between the worker and
the real Triton server forwards every call as bytes and fails some ModelInfer calls with INTERNAL, as a GPU
out of memory or a crashing backend answers. Every study completes; none is failed."""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from tests.pipeline.conftest import Stack
from tests.pipeline.test_pipeline import ct_study, send

UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


class FaultyForwarder(grpc.GenericRpcHandler):
    """Forwards every unary call to ``target``; answers INTERNAL to every ``every``-th ModelInfer call
    (the first included) without forwarding it."""

    def __init__(self, target: str, every: int) -> None:
        self.channel = grpc.insecure_channel(target, options=UNLIMITED)
        self.every = every
        self.lock = threading.Lock()
        self.infers = 0
        self.faults = 0

    def _fault(self, method: str) -> bool:
        if not method.endswith("/ModelInfer"):
            return False
        with self.lock:
            self.infers += 1
            fault = (self.infers - 1) % self.every == 0
            self.faults += fault
            return fault

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        forward = self.channel.unary_unary(method)  # no serializers: the request and answer pass as bytes

        def handle(request: bytes, context: grpc.ServicerContext) -> Any:
            if self._fault(method):
                context.abort(grpc.StatusCode.INTERNAL, "injected: CUDA error: out of memory")
            try:
                return forward(request, metadata=context.invocation_metadata(), timeout=context.time_remaining())
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")

        return grpc.unary_unary_rpc_method_handler(handle)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def faulty_triton(stack: Stack) -> Iterator[FaultyForwarder]:
    """The worker restarted to reach Triton through the proxy; restarted direct again afterwards."""
    forwarder = FaultyForwarder(stack.settings.triton_grpc_url, every=4)
    server = grpc.server(ThreadPoolExecutor(16), handlers=[forwarder], options=UNLIMITED)
    port = _free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    direct = stack.specs["worker"]
    stack.stop("worker")
    stack.specs["worker"] = dataclasses.replace(
        direct, env={**direct.env, "RADSTREAM_TRITON_GRPC_URL": f"127.0.0.1:{port}"}
    )
    try:
        stack.start("worker")
        yield forwarder
    finally:
        if "worker" in stack.supervisors:
            stack.stop("worker")
        stack.specs["worker"] = direct
        stack.start("worker")
        server.stop(grace=None)
        forwarder.channel.close()


@pytest.mark.slow
def test_studies_complete_when_triton_answers_internal_to_some_requests(
    stack: Stack, faulty_triton: FaultyForwarder
) -> None:
    studies = []
    for _ in range(12):
        uids, datasets = ct_study(2)
        send(stack, datasets)
        studies.append(uids.study)
    final = [stack.wait_status(study, ("completed", "failed"), timeout_s=180) for study in studies]
    assert [s["status"] for s in final] == ["completed"] * len(studies), [
        s for s in final if s["status"] != "completed"
    ]
    assert all(s["runs"] == 1 for s in final), final
    assert faulty_triton.faults > 0 and faulty_triton.infers > faulty_triton.faults  # faults really answered
