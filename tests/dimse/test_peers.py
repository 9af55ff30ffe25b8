"""RADSTREAM_DIMSE_PEERS: what it accepts, what it refuses, and what happens without it."""

from __future__ import annotations

import pytest

from dimse.errors import PeerConfigError
from dimse.peers import parse_peers, peer_table


def test_peers_map_calling_ae_and_host_to_a_tenant() -> None:
    table = peer_table("alpha:CT1, beta:MR1@127.0.0.1,alpha:MR1", ["alpha"], production=True)
    assert table.tenant_for("CT1", "10.0.0.9") == "alpha"
    assert table.tenant_for("MR1", "127.0.0.1") == "beta"  # the entry bound to this host first
    assert table.tenant_for("MR1", "10.0.0.9") == "alpha"
    assert table.tenant_for("OTHER", "127.0.0.1") is None


def test_a_peer_bound_to_a_host_is_not_accepted_from_another() -> None:
    table = peer_table("alpha:CT1@127.0.0.1", ["alpha"], production=True)
    assert table.tenant_for("CT1", "127.0.0.2") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpha", "not tenant:CALLINGAE"),
        ("al pha:CT1", "not tenant:CALLINGAE"),
        ("alpha:", "1-16 characters"),
        ("alpha:ABCDEFGHIJKLMNOPQ", "1-16 characters"),
        ("alpha:CT1@", "no host"),
        ("alpha:CT1,beta:CT1", "listed twice"),
        ("alpha:CT1@no-such-host.invalid", "not found"),
    ],
)
def test_invalid_entries_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(PeerConfigError, match=message):
        parse_peers(text)


def test_without_peers_a_local_stack_accepts_any_ae_into_its_first_tenant() -> None:
    table = peer_table(None, ["local", "other"], production=False)
    assert table.open and table.tenant_for("ANYTHING", "127.0.0.1") == "local"


def test_without_peers_production_refuses_to_start() -> None:
    with pytest.raises(PeerConfigError, match="required in production"):
        peer_table("", ["alpha"], production=True)
