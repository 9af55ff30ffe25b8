"""Endpoint resolution: the same endpoints, served from botocore's cache whatever the object key."""

from __future__ import annotations

import itertools
from typing import Any

import botocore.session
import pytest
from botocore.endpoint_provider import EndpointProvider

from radstream.aws.config import cache_endpoints_by_what_the_rules_read


def _provider(service: str) -> EndpointProvider:
    cache_endpoints_by_what_the_rules_read()
    loader = botocore.session.get_session().get_component("data_loader")
    rules = loader.load_service_model(service, "endpoint-rule-set-1")
    partitions = loader.load_data("partitions")
    return EndpointProvider(ruleset_data=rules, partition_data=partitions)


S3_CASES: list[dict[str, Any]] = [
    {"Region": region, "Bucket": bucket, "ForcePathStyle": path, "UseFIPS": fips, "Key": key, **endpoint}
    for region, bucket, path, fips, key, endpoint in itertools.product(
        ["us-east-1", "eu-central-1", "cn-north-1"],
        ["radstream-images", "with.dots.bucket", "arn:aws:s3:us-east-1:123456789012:accesspoint/ap"],
        [False, True],
        [False, True],
        ["instances/a/1.2.3/4.5.6/7.8.9.dcm", "results/tenant/study/report.sr.dcm"],
        [{}, {"Endpoint": "http://127.0.0.1:4566"}],
    )
]


@pytest.mark.parametrize("params", S3_CASES, ids=lambda p: "-".join(str(v)[:12] for v in p.values()))
def test_s3_endpoints_are_what_the_full_ruleset_gives(params: dict[str, Any]) -> None:
    provider = _provider("s3")
    try:
        expected = provider.ruleset.evaluate(dict(params))  # every parameter, no cache
    except Exception as exc:  # some combinations are invalid (FIPS in China): the same error either way
        with pytest.raises(type(exc)):
            provider.resolve_endpoint(**params)
        return
    assert provider.resolve_endpoint(**params) == expected


def test_a_new_object_key_is_a_cache_hit() -> None:
    provider = _provider("s3")
    base = {"Region": "us-east-1", "Bucket": "radstream-images", "ForcePathStyle": True}
    first = provider.resolve_endpoint(**base, Key="instances/a/1.dcm")
    hits = EndpointProvider.resolve_endpoint.cache_info().hits  # type: ignore[attr-defined]
    second = provider.resolve_endpoint(**base, Key="instances/a/2.dcm", Prefix="instances/")
    assert second == first
    assert EndpointProvider.resolve_endpoint.cache_info().hits == hits + 1  # type: ignore[attr-defined]
    other_bucket = provider.resolve_endpoint(**{**base, "Bucket": "radstream-results"}, Key="instances/a/2.dcm")
    assert other_bucket.url != first.url  # a parameter the rules read still counts


def test_only_parameters_no_rule_reads_are_dropped() -> None:
    assert {"Key", "Prefix", "CopySource"}.isdisjoint(_provider("s3")._radstream_read)  # type: ignore[attr-defined]
    assert {"Bucket", "Region", "Endpoint", "ForcePathStyle"} <= _provider("s3")._radstream_read  # type: ignore[attr-defined]
    for service in ("dynamodb", "kinesis", "sqs", "stepfunctions"):
        provider = _provider(service)
        declared = set(provider.ruleset.parameters)
        assert declared <= provider._radstream_read, service  # type: ignore[attr-defined]
