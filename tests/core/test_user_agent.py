"""Every AWS call names RadStream and its version in its User-Agent (CloudTrail and S3 access logs show it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata

import pytest

from radstream.aws import config as aws
from radstream.settings import Settings


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_HEAD(self) -> None:
        _Recorder.seen.append(self.headers.get("User-Agent", ""))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_requests_carry_radstream_and_its_version(endpoint: str) -> None:
    _Recorder.seen.clear()
    settings = Settings(aws_endpoint_url=endpoint)

    async def call() -> None:
        async with aws.session(settings).client("s3", **aws.client_kwargs(settings)) as s3:
            await s3.head_bucket(Bucket="radstream-images")
            await s3.head_bucket(Bucket="radstream-results")

    asyncio.run(call())
    assert len(_Recorder.seen) == 2
    expected = f"radstream/{metadata.version('radstream')} "
    assert all(agent.startswith(expected) for agent in _Recorder.seen), _Recorder.seen
    assert "botocore/" in _Recorder.seen[0] and "Python/" in _Recorder.seen[0]
