"""Which calling AE title, from which host, stores into which tenant (RADSTREAM_DIMSE_PEERS).

``RADSTREAM_DIMSE_PEERS="tenant:CALLINGAE[@host],..."``: each entry lets the calling AE title send studies
into the tenant, from any host or only from ``host`` (an IP address or a name resolved at start). With no
entries, a local stack (RADSTREAM_ENVIRONMENT other than production) accepts any calling AE into its first
tenant, so that ``storescu -aec RADSTREAM 127.0.0.1 11112 folder/`` works at once; production refuses to
start without entries.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from dimse.errors import PeerConfigError
from radstream.keys import is_tenant

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling-AE-title-not-recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called-AE-title-not-recognized
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local-limit-exceeded
AE_TITLE_CHARS = 16


@dataclass(frozen=True)
class Peer:
    tenant: str
    ae_title: str
    host: str | None = None  # None: from any host
    addresses: frozenset[str] = frozenset()  # the host's addresses, resolved at start


def _valid_ae_title(title: str) -> bool:
    return 0 < len(title) <= AE_TITLE_CHARS and title.isprintable() and "\\" not in title


def parse_peers(text: str | None, *, resolve: bool = True) -> list[Peer]:
    """The entries of RADSTREAM_DIMSE_PEERS; PeerConfigError naming the first one that is not valid."""
    peers: list[Peer] = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        tenant, sep, rest = entry.partition(":")
        ae_title, at, host = rest.partition("@")
        tenant, ae_title, host = tenant.strip(), ae_title.strip(), host.strip()
        if not sep or not is_tenant(tenant):
            raise PeerConfigError(f"RADSTREAM_DIMSE_PEERS entry {entry!r}: not tenant:CALLINGAE[@host]")
        if not _valid_ae_title(ae_title):
            raise PeerConfigError(f"RADSTREAM_DIMSE_PEERS entry {entry!r}: the AE title must be 1-16 characters")
        if at and not host:
            raise PeerConfigError(f"RADSTREAM_DIMSE_PEERS entry {entry!r}: no host after '@'")
        addresses: frozenset[str] = frozenset()
        if host and resolve:
            try:
                addresses = frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
            except OSError as exc:
                raise PeerConfigError(
                    f"RADSTREAM_DIMSE_PEERS entry {entry!r}: host {host!r} not found ({exc})"
                ) from None
        if any(p.ae_title == ae_title and p.host == (host or None) for p in peers):
            raise PeerConfigError(f"RADSTREAM_DIMSE_PEERS: {ae_title}{'@' + host if host else ''} is listed twice")
        peers.append(Peer(tenant, ae_title, host or None, addresses))
    return peers


class PeerTable:
    """Who may associate. ``any_ae_tenant``: with no peers, every calling AE goes to this tenant."""

    def __init__(self, peers: list[Peer], *, any_ae_tenant: str | None = None) -> None:
        self._peers = peers
        self._any_ae_tenant = any_ae_tenant

    @property
    def open(self) -> bool:
        """Any calling AE is accepted (no peers configured)."""
        return not self._peers

    def tenant_for(self, calling_ae: str, address: str) -> str | None:
        """The tenant of ``calling_ae`` associating from ``address``; None when it is not allowed."""
        calling_ae = calling_ae.strip()
        if not self._peers:
            return self._any_ae_tenant
        for peer in self._peers:  # a peer bound to this host first, then one from any host
            if peer.ae_title == calling_ae and peer.host is not None and address in peer.addresses:
                return peer.tenant
        for peer in self._peers:
            if peer.ae_title == calling_ae and peer.host is None:
                return peer.tenant
        return None


def peer_table(peers_text: str | None, tenants: list[str], *, production: bool) -> PeerTable:
    peers = parse_peers(peers_text)
    if peers:
        return PeerTable(peers)
    if production:
        raise PeerConfigError("RADSTREAM_DIMSE_PEERS is required in production: tenant:CALLINGAE[@host],...")
    if not tenants:
        raise PeerConfigError("no tenant to store into: set RADSTREAM_DIMSE_PEERS or RADSTREAM_API_KEYS")
    return PeerTable([], any_ae_tenant=tenants[0])
