"""Path parameters every domain's routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
Uid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="a DICOM UID")]
