"""Kinesis: a shard's writes and reads are serialized (gap 3 in the package docstring)."""

from __future__ import annotations

import threading
from typing import Any

_KINESIS_LOCK = threading.RLock()


def _patch_kinesis_concurrency() -> None:
    """moto's Kinesis shard numbers a record as "the highest so far + 1" ("not safe for concurrency", its
    source says): two PutRecords handled at once on the server's threads get the same number and one record
    replaces the other. Here a shard's writes and reads hold one lock."""
    from moto.kinesis.models import Shard

    for name in ("put_record", "get_records"):
        original = getattr(Shard, name)

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _KINESIS_LOCK:
                return _original(self, *args, **kwargs)

        setattr(Shard, name, locked)
