"""One typed settings object for every RadStream process.

Every value comes from the environment with the ``RADSTREAM_`` prefix (for example
``RADSTREAM_HTTP_PORT=9000``). Production and the local stack differ only in endpoints and credentials.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from radstream.keys import is_tenant

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADSTREAM_", extra="ignore", frozen=True)

    environment: str = Field("local", description="local | production; production refuses unsafe defaults")

    # AWS: an empty endpoint means the real AWS endpoints of the region.
    aws_endpoint_url: str | None = "http://127.0.0.1:4566"
    aws_region: str = "us-east-1"
    aws_connect_timeout_s: float = 5.0
    aws_read_timeout_s: float = 60.0
    aws_max_attempts: int = 3

    images_bucket: str = "radstream-images"
    results_bucket: str = "radstream-results"
    datalake_bucket: str = "radstream-datalake"
    status_table: str = "radstream-studies"
    inference_queue: str = "radstream-inference"
    telemetry_stream: str = "radstream-telemetry"
    state_machine_name: str = "radstream-pipeline"
    kms_key_id: str | None = Field(None, description="SSE-KMS key for objects; None requests SSE-S3 (AES256)")

    lambda_runtime_port: int = Field(9001, description="local stack only: where Lambda handlers run")

    # HTTP gateway
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    public_base_url: str | None = Field(None, description="Base of RetrieveURLs; default http://host:port")
    api_keys: SecretStr | None = Field(None, description='"tenant:key,tenant2:key2"')
    api_key_file: Path = PROJECT_ROOT / ".radstream" / "api-key"

    # STOW-RS limits
    max_upload_bytes: int = 4 * 1024**3
    spool_memory_bytes: int = 4 * 1024**2
    stow_concurrent_puts: int = 8
    # Parts (instances) one STOW-RS request may carry: each costs memory until the response is written.
    stow_max_parts: int = Field(10_000, ge=1)
    max_concurrent_stow_requests: int = 64
    storage_retry_after_s: int = 5

    # DIMSE listener (C-STORE SCP): dimse/
    dimse_host: str = "127.0.0.1"
    dimse_port: int = 11112
    dimse_ae_title: str = Field("RADSTREAM", min_length=1, max_length=16)
    dimse_peers: str | None = Field(
        None, description='"tenant:CALLINGAE[@host],..."; none: any calling AE, into the first tenant (local only)'
    )
    dimse_metrics_port: int = Field(9102, description="the listener's Prometheus /metrics, on dimse_host")
    dimse_max_associations: int = Field(32, ge=1)
    dimse_max_associations_per_peer: int = Field(8, ge=1)
    dimse_max_pdu_bytes: int = Field(262_144, ge=0, description="largest P-DATA PDU accepted; 0: unlimited")
    dimse_acse_timeout_s: float = 30.0
    dimse_dimse_timeout_s: float = 60.0
    # Restarted only when a PDU arrives: above dimse_store_timeout_s, so a slow write does not abort.
    dimse_network_timeout_s: float = 180.0
    dimse_store_timeout_s: float = Field(120.0, description="longest wait for storage before 0xA700")
    dimse_flush_instances: int = Field(500, ge=1, description="an open association's manifest every N instances")
    dimse_flush_quiet_s: float = Field(5.0, gt=0, description="... or after this long without a C-STORE")

    # Triton and the inference worker
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    triton_request_timeout_s: float = 30.0
    triton_readiness_timeout_s: float = 60.0
    # Inputs through system shared memory: "auto" = when Triton is on loopback (same host or a sidecar).
    triton_shared_memory: Literal["auto", "on", "off"] = "auto"
    batcher_max_wait_s: float = 0.002
    batcher_max_in_flight: int = 2
    worker_max_messages: int = 32
    worker_images_in_flight: int = Field(
        64, ge=1, description="images of one message fetched, decoded or at the batcher at once (bounds memory)"
    )
    worker_poll_wait_s: int = Field(2, ge=0, le=20)
    worker_visibility_timeout_s: int = 60
    worker_outage_budget_s: float = Field(
        900.0, gt=0, description="how long a study waits out an unavailable inference server before it fails"
    )
    worker_server_fault_retries: int = Field(5, ge=0, description="tries again after Triton answered INTERNAL etc.")

    # Recovery (worker/stages/reconcile.py): run by EventBridge Scheduler on AWS, by `radstream up` locally
    reconcile_after_s: float = Field(
        600.0,
        gt=0,
        description="a study received this long ago with no run, or a run this old without an execution, is started",
    )
    reconcile_stuck_after_s: float = Field(
        3600.0, gt=0, description="a run in flight longer than this is reported stuck"
    )
    reconcile_interval_s: float = Field(300.0, gt=0, description="local stack only: how often the reconciler runs")
    pipeline_retry_scale: float = Field(
        1.0, gt=0, le=1, description="local stack only: scales the state machine's retry intervals (tests)"
    )

    # Export of results (worker/stages/export.py; destinations: radstream/destinations.py)
    export_destinations: SecretStr | None = Field(
        None, description="JSON array of destinations (local stack); production reads the secret below"
    )
    export_destinations_secret_arn: str | None = Field(
        None, description="Secrets Manager secret holding the destinations document (production)"
    )
    export_retry_budget_s: float = Field(
        3600.0, gt=0, description="how long a destination that does not answer is retried before it is failed"
    )
    export_timeout_s: float = Field(30.0, gt=0, description="connect, read and DIMSE timeouts of one attempt")
    model_repository: Path = PROJECT_ROOT / "triton" / "models"
    state_dir: Path = PROJECT_ROOT / ".radstream"

    @field_validator("aws_endpoint_url", "kms_key_id", "public_base_url", "api_keys", "dimse_peers", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def tenant_keys(self) -> dict[str, str]:
        """Map of API key -> tenant parsed from ``api_keys``; an empty map when none are configured."""
        if self.api_keys is None:
            return {}
        keys: dict[str, str] = {}
        for item in self.api_keys.get_secret_value().split(","):
            item = item.strip()
            if not item:
                continue
            tenant, sep, key = (part.strip() for part in item.partition(":"))
            if not sep or not tenant or not key:
                raise ValueError(f"RADSTREAM_API_KEYS entry {tenant!r} is not of the form tenant:key")
            if not is_tenant(tenant):
                raise ValueError(
                    f"RADSTREAM_API_KEYS: tenant {tenant!r} is not a valid tenant name (1 to 64 letters, digits, "
                    "'-' or '_'; it is part of every storage key)"
                )
            if self.environment == "production" and len(key) < 24:
                raise ValueError(f"API key of tenant {tenant!r} is shorter than 24 characters")
            if keys.get(key, tenant) != tenant:  # one key for two tenants: whose data would it open?
                raise ValueError(f"RADSTREAM_API_KEYS: tenants {keys[key]!r} and {tenant!r} have the same API key")
            keys[key] = tenant
        return keys

    @property
    def base_url(self) -> str:
        return self.public_base_url or f"http://{self.http_host}:{self.http_port}"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"RADSTREAM_{name.upper()}"] = "" if value is None else str(value)
    return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
