"""Where results are exported: each tenant's DICOMweb (STOW-RS) and DIMSE (C-STORE) destinations.

``RADSTREAM_EXPORT_DESTINATIONS`` holds a JSON array; in production the same document comes from Secrets
Manager (``RADSTREAM_EXPORT_DESTINATIONS_SECRET_ARN``), so header values such as an Authorization never sit
in a ConfigMap, an environment listing or a log. Each object:

* ``tenant``, ``name`` (unique within the tenant: it names the destination in the study's status),
  ``kind``: ``dicomweb`` or ``dimse``;
* ``dicomweb``: ``url`` (the DICOMweb base; instances go to ``{url}/studies``), optional ``headers``;
* ``dimse``: ``host``, ``port``, ``ae_title`` (the called AE), optional ``calling_ae_title`` (default
  ``RADSTREAM``);
* optional ``models`` and ``modalities``: only results of these models, of studies with one of these
  modalities, go there (default: every result of the tenant).

Nothing here prints a header value: ``repr`` and errors name the destination and the field only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, field_validator

from radstream.keys import is_tenant

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE: 16 characters, no backslash
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InvalidDestinations(ValueError):
    """The destinations document is not valid; the message says where, never a header value."""


class _Destination(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    name: str
    models: tuple[str, ...] | None = None
    modalities: tuple[str, ...] | None = None

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not is_tenant(value):
            raise ValueError("not a tenant name")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    def takes(self, model: str | None, modalities: Iterable[str]) -> bool:
        """Whether a result of ``model`` for a study of ``modalities`` goes here."""
        if self.models is not None and model not in self.models:
            return False
        return self.modalities is None or bool(set(self.modalities) & set(modalities))


class DicomwebDestination(_Destination):
    kind: Literal["dicomweb"]
    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("an http:// or https:// base URL")
        return value.rstrip("/")

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}


class DimseDestination(_Destination):
    kind: Literal["dimse"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    ae_title: str
    calling_ae_title: str = "RADSTREAM"

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        if not _AE_TITLE.match(value) or not value.strip():
            raise ValueError("an AE title: 1-16 printable characters, no backslash")
        return value


Destination = Annotated[DicomwebDestination | DimseDestination, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[list[DicomwebDestination | DimseDestination]] = TypeAdapter(list[Destination])


def parse_destinations(text: str | None) -> list[DicomwebDestination | DimseDestination]:
    """The destinations of a JSON document (empty or missing: none); InvalidDestinations says what is wrong."""
    if text is None or not text.strip():
        return []
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidDestinations(f"export destinations: not JSON (line {exc.lineno} column {exc.colno})") from None
    if not isinstance(document, list):
        raise InvalidDestinations("export destinations: a JSON array of destination objects is expected")
    try:
        destinations = _ADAPTER.validate_python(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"])
            problems.append(f"[{where}]: {error['msg']}")
        raise InvalidDestinations("export destinations: " + "; ".join(problems[:5])) from None
    seen: set[tuple[str, str]] = set()
    for index, destination in enumerate(destinations):
        key = (destination.tenant, destination.name)
        if key in seen:
            raise InvalidDestinations(
                f"export destinations: [{index}]: a second destination named {destination.name!r} "
                f"for tenant {destination.tenant!r}"
            )
        seen.add(key)
    return destinations


def of_tenant(
    destinations: Iterable[DicomwebDestination | DimseDestination], tenant: str
) -> list[DicomwebDestination | DimseDestination]:
    return [d for d in destinations if d.tenant == tenant]
