"""Load test of the RadStream gateway: PACS pushes over STOW-RS, status polling, results retrieval.

Each simulated PACS pushes a study, then polls ``GET /v1/studies/{uid}`` until the study is ``completed``
(a bounded number of tries), then fetches ``GET /v1/studies/{uid}/results``. Studies are a mix of single
CR/DX projection images (2-10 MB) and CT series (100-500 slices of 512x512, sent 10 per STOW request).

Against ``make up`` (gateway on http://127.0.0.1:8080, API key read from ``.radstream/api-key``)::

    mkdir -p .radstream/loadtest
    .venv/bin/locust -f loadtest/locustfile.py --headless --users 4 --spawn-rate 1 --run-time 5m \\
        --stop-timeout 120 --csv .radstream/loadtest/stow --html .radstream/loadtest/report.html

This writes ``.radstream/loadtest/stow_stats.csv`` (and ``_failures.csv``, ``_exceptions.csv``,
``_stats_history.csv``) and an HTML report. Configuration comes from environment variables with the prefix
``RADSTREAM_LOADTEST_``, all in :class:`LoadTestSettings` (for example
``RADSTREAM_LOADTEST_CT_SLICES_MAX=200``); ``--host`` on the command line overrides
``RADSTREAM_LOADTEST_HOST``.

Request names in the reports:

* ``STOW CR/DX image`` and ``STOW CT batch``: one STOW-RS request; a failure when any instance was refused;
* ``GET /v1/studies/[uid]`` (every poll) and ``GET /v1/studies/[uid]/results``;
* ``POLL completed``: time from the end of the upload until the status said ``completed``;
* ``POLL not completed``: a failure: the study was not ``completed`` after ``status_poll_tries`` polls
  (expected while the pipeline that completes studies is not running);
* ``GET /v1/studies/[uid]/results (not completed)``: results fetched for a study that never completed;
  a 404 there is expected and not a failure.

Templates (a few CT slices, a few projection images) are generated once per process with placeholder UIDs
of fixed length; each instance sent is a template with its UIDs replaced, so the client spends its CPU on
sending, not on making DICOM.
"""

from __future__ import annotations

import functools
import math
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, task
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loadtest.synthetic import StudyUids, ct_slice, dx_image, to_bytes
from radstream.settings import PROJECT_ROOT

STOW_PROJECTION = "STOW CR/DX image"
STOW_CT = "STOW CT batch"
STATUS = "GET /v1/studies/[uid]"
RESULTS = "GET /v1/studies/[uid]/results"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
UID_DIGITS = 30  # 26 + 30 = 56 characters: even, so no padding byte, and always the same length


class LoadTestSettings(BaseSettings):
    """Everything the load test can be told, from ``RADSTREAM_LOADTEST_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RADSTREAM_LOADTEST_", extra="ignore", frozen=True)

    host: str = "http://127.0.0.1:8080"
    api_key: SecretStr | None = None
    api_key_file: Path = PROJECT_ROOT / ".radstream" / "api-key"

    ct_slices_min: int = 100
    ct_slices_max: int = 500
    ct_slice_px: int = 512
    ct_batch_instances: int = 10
    ct_templates: int = 4
    projection_bytes_min: int = 2_000_000
    projection_bytes_max: int = 10_000_000
    projection_templates: int = 3
    ct_weight: float = 1.0
    projection_weight: float = 3.0

    status_poll_tries: int = 10
    status_poll_interval_s: float = 2.0
    wait_min_s: float = 1.0
    wait_max_s: float = 5.0
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 300.0

    @model_validator(mode="after")
    def _ranges(self) -> LoadTestSettings:
        for low, high in (
            ("ct_slices_min", "ct_slices_max"),
            ("projection_bytes_min", "projection_bytes_max"),
            ("wait_min_s", "wait_max_s"),
        ):
            if getattr(self, low) > getattr(self, high) or getattr(self, low) < 0:
                raise ValueError(f"need 0 <= {low} <= {high}")
        if min(self.ct_slices_min, self.ct_batch_instances, self.ct_templates, self.projection_templates) < 1:
            raise ValueError("slice counts, batch size and template counts must be at least 1")
        if self.status_poll_tries < 1:
            raise ValueError("status_poll_tries must be at least 1")
        return self

    def bearer_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        try:
            return self.api_key_file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(
                f"no API key: set RADSTREAM_LOADTEST_API_KEY or start the stack (it writes {self.api_key_file})"
            ) from exc


def fixed_length_uid() -> str:
    return UID_ROOT + str(10 ** (UID_DIGITS - 1) + secrets.randbelow(9 * 10 ** (UID_DIGITS - 1)))


@dataclass(frozen=True)
class Template:
    """A serialised instance whose UIDs are placeholders of the same length as :func:`fixed_length_uid`."""

    data: bytes
    study: bytes
    series: bytes
    frame: bytes
    sop: bytes

    def instance(self, study: str, series: str, frame: str) -> bytes:
        return (
            self.data.replace(self.study, study.encode())
            .replace(self.series, series.encode())
            .replace(self.frame, frame.encode())
            .replace(self.sop, fixed_length_uid().encode())
        )


def _template(make: Any) -> Template:
    study, series, frame, sop = (fixed_length_uid() for _ in range(4))
    ds = make(StudyUids(study=study, series=series))
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = frame
    return Template(to_bytes(ds), study.encode(), series.encode(), frame.encode(), sop.encode())


@dataclass(frozen=True)
class Templates:
    ct: list[Template]
    projection: list[Template]


@functools.cache
def templates(settings: LoadTestSettings) -> Templates:
    """Built once per process, on first use."""
    px = settings.ct_slice_px
    ct = [
        _template(lambda uids, i=i: ct_slice(uids, i, rows=px, cols=px, seed=i)) for i in range(settings.ct_templates)
    ]
    count = settings.projection_templates
    span = settings.projection_bytes_max - settings.projection_bytes_min
    sizes = [settings.projection_bytes_min + span * i // max(count - 1, 1) for i in range(count)]
    sides = [max(16, int(math.sqrt(size / 2))) for size in sizes]  # 16-bit pixels
    projection = [
        _template(lambda uids, i=i, side=side: dx_image(uids, rows=side, cols=side, seed=i))
        for i, side in enumerate(sides)
    ]
    return Templates(ct=ct, projection=projection)


def multipart(parts: list[bytes], boundary: str) -> bytes:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    pieces = [piece for part in parts for piece in (head, part, b"\r\n")]
    return b"".join(pieces) + f"--{boundary}--\r\n".encode()


class StudyNotCompleted(Exception):
    pass


SETTINGS = LoadTestSettings()


class PacsUser(FastHttpUser):
    """A PACS pushing studies, then waiting for and fetching their results."""

    host = SETTINGS.host
    wait_time = between(SETTINGS.wait_min_s, SETTINGS.wait_max_s)
    connection_timeout = SETTINGS.connect_timeout_s
    network_timeout = SETTINGS.request_timeout_s

    def on_start(self) -> None:
        self.settings = SETTINGS
        self.templates = templates(SETTINGS)
        self.auth = {"Authorization": f"Bearer {SETTINGS.bearer_key()}"}

    @task
    def push_poll_fetch(self) -> None:
        kinds = ["projection", "ct"]
        kind = random.choices(kinds, weights=[self.settings.projection_weight, self.settings.ct_weight])[0]
        study = self.push_projection() if kind == "projection" else self.push_ct()
        if study is None:
            return
        completed = self.poll_status(study)
        self.fetch_results(study, completed)

    def push_projection(self) -> str | None:
        study, series = fixed_length_uid(), fixed_length_uid()
        part = random.choice(self.templates.projection).instance(study, series, fixed_length_uid())
        return study if self.stow(study, [part], STOW_PROJECTION) else None

    def push_ct(self) -> str | None:
        study, series, frame = fixed_length_uid(), fixed_length_uid(), fixed_length_uid()
        slices = random.randint(self.settings.ct_slices_min, self.settings.ct_slices_max)
        ct = self.templates.ct
        batch = self.settings.ct_batch_instances
        for start in range(0, slices, batch):
            parts = [ct[i % len(ct)].instance(study, series, frame) for i in range(start, min(start + batch, slices))]
            if not self.stow(study, parts, STOW_CT):
                return None
        return study

    def stow(self, study: str, parts: list[bytes], name: str) -> bool:
        boundary = uuid.uuid4().hex
        headers = {
            **self.auth,
            "Accept": "application/dicom+json",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        }
        with self.client.post(
            f"/dicomweb/studies/{study}",
            data=multipart(parts, boundary),  # type: ignore[arg-type]  # documented as str or bytes
            headers=headers,
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return False
            stored = response.json().get("00081199", {}).get("Value", []) or []
            if len(stored) != len(parts):
                response.failure(f"{len(stored)} of {len(parts)} instances stored")
                return False
            response.success()
            return True

    def poll_status(self, study: str) -> bool:
        """True once the study is ``completed``; records ``POLL completed`` or ``POLL not completed``."""
        started = time.perf_counter()
        for attempt in range(self.settings.status_poll_tries):
            if attempt:
                time.sleep(self.settings.status_poll_interval_s)  # gevent-patched by locust: yields
            with self.client.get(
                f"/v1/studies/{study}", headers=self.auth, name=STATUS, catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                    return False
                state = response.json().get("status")
                if state == "failed":
                    response.failure(f"the pipeline failed the study: {response.json().get('failure_reason')}")
                    return False
                response.success()
            if state == "completed":
                self._event("completed", started, None)
                return True
        detail = f"still {state!r} after {self.settings.status_poll_tries} polls"
        self._event("not completed", started, StudyNotCompleted(detail))
        return False

    def fetch_results(self, study: str, completed: bool) -> None:
        name = RESULTS if completed else f"{RESULTS} (not completed)"
        with self.client.get(
            f"/v1/studies/{study}/results", headers=self.auth, name=name, catch_response=True
        ) as response:
            if response.status_code == 200 or (response.status_code == 404 and not completed):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")

    def _event(self, name: str, started: float, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="POLL",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={},
        )
