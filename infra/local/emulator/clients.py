"""boto3 clients that reach this process's moto backends without HTTP (Step Functions' service integrations
and the Firehose pump use them; gap 5 in the package docstring)."""

from __future__ import annotations

import threading
from typing import Any

import boto3

_CLIENTS_LOCK = threading.Lock()


def in_process_client(service: str, region: str) -> Any:
    """A boto3 client whose requests go straight to this process's moto backends, as in moto's decorator
    mode: the same request and response serialisation, but no socket, HTTP server or thread per request."""
    from botocore.config import Config
    from moto.core.botocore_stubber import BotocoreStubber

    stubber = BotocoreStubber()
    stubber.enabled = True
    with _CLIENTS_LOCK:  # creating clients on one boto3 session is not thread-safe; using them is
        client = boto3.client(
            service,
            region_name=region,
            aws_access_key_id="radstream",
            aws_secret_access_key="radstream",  # noqa: S106 - the emulator accepts any key
            config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
        )
    client.meta.events.register("before-send", stubber)
    return client
