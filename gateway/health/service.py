"""Readiness: whether what STOW-RS needs answers."""

from __future__ import annotations

from gateway.services import Services
from radstream.errors import StorageUnavailable


async def check_ready(services: Services) -> None:
    """StorageUnavailable (503, Retry-After) unless the images bucket and the status table answer."""
    checks = (("the object store", services.images.reachable), ("the status table", services.status.reachable))
    for what, reachable in checks:
        if not await reachable():
            raise StorageUnavailable(
                f"{what} is not reachable",
                headers={"Retry-After": str(services.settings.storage_retry_after_s)},
            )
