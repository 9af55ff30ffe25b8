"""WADO-RS content negotiation (PS3.18 8.7): media ranges by preference, and transfer syntaxes as stored."""

from __future__ import annotations

import pytest

from gateway.dicomweb import wado
from gateway.dicomweb.wado import MULTIPART, SINGLE, Acceptable
from radstream.errors import NotAcceptable

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, [Acceptable(MULTIPART, None)]),
        ("application/dicom", [Acceptable(SINGLE, None)]),
        ("application/*", [Acceptable(SINGLE, None)]),
        ("*/*", [Acceptable(MULTIPART, None)]),
        # q=0 is a refusal, not a low preference
        ('application/dicom;q=0, multipart/related; type="application/dicom"', [Acceptable(MULTIPART, None)]),
        # higher q first, whatever the order
        (
            'multipart/related; type="application/dicom"; q=0.1, application/dicom',
            [Acceptable(SINGLE, None), Acceptable(MULTIPART, None)],
        ),
        (f"application/dicom; transfer-syntax={JPEG_BASELINE}", [Acceptable(SINGLE, JPEG_BASELINE)]),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', [Acceptable(MULTIPART, None)]),
        ('multipart/related; type="image/jpeg", image/png', []),
    ],
)
def test_acceptable_ranges_in_order_of_preference(accept: str | None, expected: list[Acceptable]) -> None:
    assert wado.acceptable(accept) == expected


async def _stored(syntax: str | None, calls: list[str]) -> str | None:
    calls.append("read")
    return syntax


async def test_a_requested_transfer_syntax_must_be_the_stored_one() -> None:
    calls: list[str] = []
    accept = f"application/dicom; transfer-syntax={JPEG_BASELINE}, application/dicom; transfer-syntax={EXPLICIT_LE}"
    choice = await wado.negotiate(accept, lambda: _stored(EXPLICIT_LE, calls))
    assert choice == Acceptable(SINGLE, EXPLICIT_LE)
    assert calls == ["read"]  # the stored syntax is read once
    assert wado.part_content_type(EXPLICIT_LE) == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert wado.part_content_type(None) == "application/dicom"  # only when the stored syntax is unknown

    with pytest.raises(NotAcceptable, match="never transcoded"):
        await wado.negotiate(f"application/dicom; transfer-syntax={JPEG_BASELINE}", lambda: _stored(EXPLICIT_LE, []))


async def test_the_stored_syntax_is_not_read_when_nothing_names_one() -> None:
    calls: list[str] = []
    assert await wado.negotiate("application/dicom", lambda: _stored(EXPLICIT_LE, calls)) == Acceptable(SINGLE, None)
    assert calls == []
