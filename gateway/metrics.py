"""Prometheus metrics of the gateway, in a registry per app (so tests can build many apps)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radstream.ingest.outcome import IngestOutcome


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "radstream_http_requests_total",
            "HTTP requests by route template, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "radstream_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.instances_stored = Counter(
            "radstream_instances_stored_total",
            "SOP instances newly stored by STOW-RS",
            registry=self.registry,
        )
        self.instances_resent = Counter(
            "radstream_instances_resent_total",
            "SOP instances re-sent with identical content (not stored twice)",
            registry=self.registry,
        )
        self.bytes_stored = Counter(
            "radstream_stored_bytes_total", "bytes of newly stored instances", registry=self.registry
        )
        self.failures = Counter(
            "radstream_instance_failures_total",
            "instances refused by STOW-RS, by failure reason code",
            ["reason"],
            registry=self.registry,
        )

    def record_stow(self, outcome: IngestOutcome) -> None:
        for inst in outcome.stored:
            if inst.created:
                self.instances_stored.inc()
                self.bytes_stored.inc(inst.size)
            else:
                self.instances_resent.inc()
        for failed in outcome.failed:
            self.failures.labels(reason=f"0x{int(failed.reason):04X}").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (no body buffering): latency and status per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope["method"]
            route = getattr(scope.get("route"), "path", "unmatched")  # set by the router once matched
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, method, str(status)).inc()
