"""Unit checks of the local stack's adapters (the pipeline tests exercise them end to end)."""

from __future__ import annotations

from datetime import UTC, datetime

import moto
import pytest

from infra import resources
from infra.local import lambda_runtime, moto_gaps


def test_pinned_to_the_moto_version_it_was_checked_against(monkeypatch: pytest.MonkeyPatch) -> None:
    assert moto.__version__ == moto_gaps.MOTO_VERSION
    monkeypatch.setattr(moto, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match=r"targets moto 5\.2\.5"):
        moto_gaps._check_version()


def test_firehose_prefix_expands_like_firehose() -> None:
    when = datetime(2026, 3, 7, 9, 0, tzinfo=UTC)
    assert moto_gaps._expand_prefix(resources.TELEMETRY_PREFIX, when) == "telemetry/year=2026/month=03/day=07/"


def test_input_transformer_gives_bucket_and_key() -> None:
    target = {
        "InputTransformer": {
            "InputPathsMap": resources.MANIFEST_INPUT_PATHS,
            "InputTemplate": resources.MANIFEST_INPUT_TEMPLATE,
        }
    }
    event = {"detail": {"bucket": {"name": "images"}, "object": {"key": "manifests/t/1.2/r.json"}}}
    assert moto_gaps._transform(target, event) == {"bucket": "images", "key": "manifests/t/1.2/r.json"}


def test_runtime_reports_exceptions_as_lambda_does() -> None:
    answer = lambda_runtime.invoke("worker.lambdas.start_pipeline", {"bucket": "b"})
    assert answer["error"]["errorType"] == "ManifestInvalid"
    assert "no object key" in answer["error"]["errorMessage"]


def test_runtime_runs_only_our_handlers() -> None:
    answer = lambda_runtime.invoke("os.system", {})
    assert answer["error"]["errorType"] == "HandlerNotAllowed"
