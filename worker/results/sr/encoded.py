"""SR content items encoded straight to Explicit VR Little Endian bytes.

A 200-image study's report holds about 6,000 content items and 20,000 data elements. Built as pydicom
datasets and written by pydicom's writer they cost about a second of CPU, most of StoreResults; encoded
here, a few tens of milliseconds. The items keep the shape pydicom would write (elements in tag order,
values padded to an even length: UI with NUL, the other strings with a space), with defined lengths for
sequences and items (PS3.5 7.5). The document holds them as one raw Content Sequence element, which
pydicom writes as it is and decodes like any other when it is read (``sr.ContentSequence``).

Only the value representations the report uses are encoded; any other raises ``ValueError``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, default_encoding, encode_string
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_LONG_LENGTH = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_TEXT = frozenset({"SH", "LO", "ST", "LT", "UT", "UC"})  # in the Specific Character Set
_ASCII = frozenset({"CS", "UI", "DS", "IS", "DA", "TM", "DT", "AE", "AS", "UR"})
_BINARY = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FL": "f", "FD": "d"}


@lru_cache(maxsize=256)
def _entry(keyword: str) -> tuple[int, str, bytes]:
    """(tag, VR, encoded tag) of a dictionary keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    return tag, dictionary_VR(tag), struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def _strings(value: Any) -> list[str]:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not all(isinstance(v, str | int | float) for v in values):
        raise ValueError(f"a string value must be text or a number, not {type(values[0]).__name__}")
    return [str(v) for v in values]


class Item:
    """One sequence item: keyword -> value, encoded when the document is."""

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        self._values: dict[str, Any] = dict(values)

    def __setitem__(self, keyword: str, value: Any) -> None:
        self._values[keyword] = value

    def body(self, encodings: Sequence[str]) -> bytes:
        """The item's data elements, in tag order."""
        elements = []
        for keyword, value in self._values.items():
            tag, vr, encoded_tag = _entry(keyword)
            elements.append((tag, encoded_tag, vr, _value(vr, value, encodings)))
        elements.sort(key=lambda e: e[0])
        parts = []
        for _, encoded_tag, vr, data in elements:
            if vr in _LONG_LENGTH:
                parts.append(encoded_tag + vr.encode() + b"\0\0" + struct.pack("<I", len(data)))
            else:
                if len(data) > 0xFFFF:
                    raise ValueError(f"a {vr} value of {len(data)} bytes does not fit a 16-bit length")
                parts.append(encoded_tag + vr.encode() + struct.pack("<H", len(data)))
            parts.append(data)
        return b"".join(parts)

    def encode(self, encodings: Sequence[str]) -> bytes:
        """The item with its Item tag and defined length."""
        body = self.body(encodings)
        return _ITEM + struct.pack("<I", len(body)) + body


def _value(vr: str, value: Any, encodings: Sequence[str]) -> bytes:
    if vr == "SQ":
        return b"".join(item.encode(encodings) for item in value)
    if vr in _BINARY:
        numbers = value if isinstance(value, list | tuple) else [value]
        return struct.pack(f"<{len(numbers)}{_BINARY[vr]}", *numbers)
    text = "\\".join(_strings(value))
    if vr in _TEXT:
        data = encode_string(text, list(encodings))
    elif vr in _ASCII:
        data = text.encode("ascii")
    else:
        raise ValueError(f"value representation {vr} is not encoded here")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def character_set(dataset: Dataset) -> str | list[str]:
    """The Python codecs for the text of ``dataset``, as pydicom names them: its Specific Character Set
    converted, or pydicom's default (a string) when it has none."""
    charset = dataset.get("SpecificCharacterSet")
    return list(convert_encodings(charset)) if charset else default_encoding


def mark_explicit_little(dataset: Dataset) -> None:
    """Mark ``dataset`` as if read from Explicit VR Little Endian in its own character set, so that pydicom
    writes its raw elements as they are (``Dataset.set_original_encoding``)."""
    dataset.set_original_encoding(False, True, character_set(dataset))


def raw_sequence(keyword: str, items: Iterable[Item], charset: str | list[str]) -> RawDataElement:
    """A sequence of ``items`` as one raw data element, for a dataset marked Explicit VR Little Endian."""
    encodings = [charset] if isinstance(charset, str) else charset
    tag, vr, _ = _entry(keyword)
    if vr != "SQ":
        raise ValueError(f"{keyword} is not a sequence")
    value = b"".join(item.encode(encodings) for item in items)
    return RawDataElement(BaseTag(tag), "SQ", len(value), value, 0, False, True)


def to_dataset(item: Item, charset: str | list[str]) -> Dataset:
    """``item`` decoded into a pydicom dataset (for the few items pydicom builds around)."""
    encodings = [charset] if isinstance(charset, str) else charset
    return read_dataset(io.BytesIO(item.body(encodings)), is_implicit_VR=False, is_little_endian=True)
