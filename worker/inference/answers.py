"""What the inference worker does when inference raised: fail the task with a typed pipeline error, or wait
and try again (Triton or storage may be back by then).

* Triton (or storage) unavailable, a timeout, a model not ready: tried again, with backoff, for as long as
  the outage budget (``worker_outage_budget_s``, 15 minutes by default) since the first such failure; the
  message is held and its task heartbeated meanwhile. Past the budget: ``InferenceUnavailable``, with a
  reason that says so; a reprocess brings the study back.
* A server fault (INTERNAL, RESOURCE_EXHAUSTED, ...): tried again ``worker_server_fault_retries`` times.
* An error the worker knows (Triton refused the input, an object missing, a malformed object):
  ``InferenceFailed`` at once.
* Anything else, a bug or a failure nobody foresaw: ``InferenceFailed`` with the class and place only (its
  message may quote DICOM values), logged with the traceback; the study still learns why.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from radstream.errors import NotFound, RadStreamError, StorageUnavailable, frames
from radstream.errors import describe as where
from worker.formats.errors import InferenceFailed, InferenceUnavailable, PipelineError
from worker.inference.triton.errors import (
    InferenceTimeout,
    ModelNotReady,
    ServerFault,
    TritonError,
    TritonUnavailable,
)

log = logging.getLogger("radstream.worker")

UNAVAILABLE = (TritonUnavailable, InferenceTimeout, ModelNotReady, StorageUnavailable)
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0


def describe(exc: BaseException) -> str:
    """Our own errors carry our own words; anything else its class and place."""
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, RadStreamError) else where(exc)


@dataclass
class Retries:
    """One message's retries: when its outage began, how many server faults it met."""

    outage_budget_s: float
    server_fault_retries: int
    clock: Callable[[], float] = time.monotonic
    outage_since: float | None = None
    faults: int = 0
    attempts: int = 0

    def decide(self, exc: Exception, *, study: str) -> PipelineError | float:
        """The error to fail the task with, or how many seconds to wait before trying again."""
        self.attempts += 1
        if isinstance(exc, UNAVAILABLE):
            now = self.clock()
            self.outage_since = now if self.outage_since is None else self.outage_since
            away = now - self.outage_since
            if away >= self.outage_budget_s:
                return InferenceUnavailable(
                    f"the inference server was unavailable for {away:.0f} s, past the outage budget of "
                    f"{self.outage_budget_s:.0f} s ({describe(exc)}); reprocess the study when it is back"
                )
            log.warning("study %s: %s; trying again (unavailable for %.0f s)", study, type(exc).__name__, away)
            return min(self._backoff(), max(0.0, self.outage_budget_s - away))
        if isinstance(exc, ServerFault):
            self.faults += 1
            if self.faults > self.server_fault_retries:
                return InferenceFailed(f"the inference server failed {self.faults} times: {describe(exc)}")
            log.warning("study %s: %s; trying again (%d)", study, type(exc).__name__, self.faults)
            return self._backoff()
        self.outage_since = None
        if isinstance(exc, (TritonError, NotFound, ValueError, KeyError)):
            return InferenceFailed(describe(exc))
        log.error("study %s: unexpected %s during inference\n%s", study, where(exc), frames(exc))
        return InferenceFailed(where(exc))

    def _backoff(self) -> float:
        """Full jitter on a doubling delay: the held messages do not all come back at once."""
        ceiling = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** min(self.attempts - 1, 10))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not a secret)
