"""RADSTREAM_API_KEYS: parsed strictly, so a typo cannot open one tenant's data to another."""

from __future__ import annotations

import pytest

from radstream.settings import Settings


def test_spaces_around_names_and_keys_are_ignored() -> None:
    assert Settings(api_keys="alpha:k1 , beta : k2").tenant_keys() == {"k1": "alpha", "k2": "beta"}


def test_a_key_listed_twice_for_one_tenant_is_fine() -> None:
    assert Settings(api_keys="alpha:k1,alpha:k1,alpha:k2").tenant_keys() == {"k1": "alpha", "k2": "alpha"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alpha:same,beta:same", "tenants 'alpha' and 'beta' have the same API key"),
        ("St Marys:k1", "'St Marys' is not a valid tenant name"),
        ("alpha/beta:k1", "'alpha/beta' is not a valid tenant name"),
        ("alpha", "is not of the form tenant:key"),
        ("alpha:", "is not of the form tenant:key"),
    ],
)
def test_ambiguous_or_unusable_entries_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(api_keys=value).tenant_keys()


def test_the_refusal_never_shows_a_key() -> None:
    with pytest.raises(ValueError, match="have the same API key") as info:
        Settings(api_keys="alpha:secret-key-1,beta:secret-key-1").tenant_keys()
    assert "secret-key-1" not in str(info.value)
