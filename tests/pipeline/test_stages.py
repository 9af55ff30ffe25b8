"""The stage functions called directly (the Lambda handlers are thin adapters over them)."""

from __future__ import annotations

import json
import re

import pytest

from radstream import keys
from tests.pipeline.conftest import Stack
from worker.pipeline import start, store, validate
from worker.pipeline.context import stage_context
from worker.pipeline.errors import ManifestInvalid


def test_execution_name_is_deterministic_and_valid() -> None:
    key = keys.manifest_key("alpha", "1.2.3", "20260101T000000-abcdef123456")
    name = start.execution_name(key)
    assert name == start.execution_name(key)
    assert name != start.execution_name(keys.manifest_key("beta", "1.2.3", "20260101T000000-abcdef123456"))
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name)


def test_failure_reason_reads_lambda_errors() -> None:
    cause = json.dumps({"errorMessage": "instance 1.2.3 is not in the store", "errorType": "InstanceMissing"})
    assert store.failure_reason({"Error": "InstanceMissing", "Cause": cause}) == (
        "InstanceMissing",
        "InstanceMissing: instance 1.2.3 is not in the store",
    )
    assert store.failure_reason({"Error": "States.Timeout", "Cause": "no answer"})[1] == "States.Timeout: no answer"
    assert store.failure_reason(None)[0] == "Unknown"


async def test_validate_refuses_foreign_events_and_skips_withdrawn_manifests(stack: Stack) -> None:
    async with stage_context(stack.settings) as ctx:
        with pytest.raises(ManifestInvalid):
            await validate.run(ctx, {"bucket": "someone-elses-bucket", "key": "manifests/a/1.2/r.json"})
        withdrawn = keys.manifest_key("alpha", "1.2.3", "20260101T000000-withdrawn000")
        result = await validate.run(ctx, {"bucket": stack.settings.images_bucket, "key": withdrawn})
    assert result["action"] == "skip"
    assert result["batches"] == []
