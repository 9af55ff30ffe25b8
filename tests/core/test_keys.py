"""Key segments are validated whole: Python's ``$`` also matches before a final newline."""

from __future__ import annotations

import pytest

from radstream import keys


@pytest.mark.parametrize("value", ["1.2\n", "1.2.3\n"])
def test_a_uid_with_a_trailing_newline_is_not_a_uid(value: str) -> None:
    assert not keys.is_uid(value)
    with pytest.raises(ValueError, match="invalid UID"):
        keys.instance_key("alpha", value, "1.2", "1.3")


def test_tenant_and_request_id_with_a_trailing_newline_are_refused() -> None:
    assert not keys.is_tenant("alpha\n") and keys.is_tenant("alpha")
    assert not keys.is_request_id("20260101T000000-abc\n") and keys.is_request_id("20260101T000000-abc")
    with pytest.raises(ValueError, match="invalid tenant"):
        keys.manifest_key("alpha\n", "1.2", "r")
