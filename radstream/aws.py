"""AWS session factory: the only place that knows endpoints, timeouts and retry policy."""

from __future__ import annotations

from typing import Any

import aioboto3
from botocore.config import Config

from radstream.settings import Settings

# Emulator credentials: moto accepts any; real AWS uses the default credential chain (IRSA on EKS).
_LOCAL_ACCESS_KEY = "radstream"


def session(settings: Settings) -> aioboto3.Session:
    if settings.aws_endpoint_url is not None:
        return aioboto3.Session(
            region_name=settings.aws_region,
            aws_access_key_id=_LOCAL_ACCESS_KEY,
            aws_secret_access_key=_LOCAL_ACCESS_KEY,
        )
    return aioboto3.Session(region_name=settings.aws_region)


def client_kwargs(settings: Settings, *, max_pool_connections: int = 64) -> dict[str, Any]:
    """Keyword arguments for ``session.client(...)``: endpoint, explicit timeouts, bounded retries."""
    config = Config(
        connect_timeout=settings.aws_connect_timeout_s,
        read_timeout=settings.aws_read_timeout_s,
        retries={"max_attempts": settings.aws_max_attempts, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        # The body's integrity is carried by x-amz-checksum-sha256 (ObjectStore.put_once), which S3
        # verifies; signing the payload as well would hash every body a second time.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"config": config}
    if settings.aws_endpoint_url is not None:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    return kwargs
