"""The AWS emulator as a child process of the local stack: moto in server mode, in its own process, on loopback."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from infra.local.processes import ProcessSpec
from radstream.settings import Settings, settings_env

# Objects above this many bytes are spooled to disk by moto instead of being held in RAM.
S3_KEY_BUFFER_BYTES = 1024 * 1024


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """True when ``url`` answers 2xx; never raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL from settings
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def emulator_process_spec(settings: Settings) -> ProcessSpec:
    if settings.aws_endpoint_url is None:
        raise ValueError("the local stack needs RADSTREAM_AWS_ENDPOINT_URL (e.g. http://127.0.0.1:4566)")
    url = urlsplit(settings.aws_endpoint_url)
    host, port = url.hostname or "127.0.0.1", url.port or 4566
    env = {
        "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(S3_KEY_BUFFER_BYTES),
        "MOTO_PORT": str(port),  # Step Functions' service integrations call back into this server
        "AWS_DEFAULT_REGION": settings.aws_region,
        "RADSTREAM_LAMBDA_RUNTIME_URL": f"http://127.0.0.1:{settings.lambda_runtime_port}",
    }
    return ProcessSpec(
        name="aws-emulator",
        argv=[sys.executable, "-m", "infra.local.emulator", "--host", host, "--port", str(port)],
        env={**os.environ, **settings_env(settings), **env},
        ready=lambda: http_ok(f"{settings.aws_endpoint_url}/moto-api/data.json"),
        ready_timeout_s=30.0,
        log_path=settings.state_dir / "logs" / "aws-emulator.log",
    )
