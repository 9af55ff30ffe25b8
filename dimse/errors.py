"""Errors of the DIMSE listener."""

from __future__ import annotations

from radstream.errors import RadStreamError


class PeerConfigError(RadStreamError, ValueError):
    """RADSTREAM_DIMSE_PEERS (or the lack of it) cannot be used; the message says which entry and why."""

    error = "invalid_dimse_peers"
