"""pydicom's bundled test files: one per transfer syntax round-trips byte-identical, labelled with its syntax;
none makes a 5xx."""

from __future__ import annotations

import warnings
from pathlib import Path

import httpx
import pydicom
import pydicom.data
import pytest

from tests.conftest import Gateway
from tests.gateway.stowhelp import failed, referenced, stow

TEST_FILES = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("**/*.dcm"))


def _one_per_transfer_syntax() -> dict[str, Path]:
    candidates: dict[str, list[tuple[Path, str]]] = {}
    required = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in TEST_FILES:
            if path.read_bytes()[128:132] != b"DICM":
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
            if syntax and all(k in ds for k in required):
                candidates.setdefault(syntax, []).append((path, str(ds.SOPInstanceUID)))
    # Several bundled files share one SOP Instance UID across syntaxes: rarest syntaxes choose first.
    chosen: dict[str, Path] = {}
    seen: set[str] = set()
    for syntax, files in sorted(candidates.items(), key=lambda item: len(item[1])):
        for path, sop in files:
            if sop not in seen:
                chosen[syntax] = path
                seen.add(sop)
                break
    return chosen


BY_SYNTAX = _one_per_transfer_syntax()


def test_every_common_syntax_is_present() -> None:
    names = {pydicom.uid.UID(uid).keyword for uid in BY_SYNTAX}
    expected = {
        "ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "DeflatedExplicitVRLittleEndian", "ExplicitVRBigEndian",
        "JPEGBaseline8Bit", "JPEGLosslessSV1", "JPEGLSLossless", "JPEG2000Lossless", "JPEG2000", "RLELossless",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("syntax", sorted(BY_SYNTAX), ids=lambda uid: pydicom.uid.UID(uid).keyword or uid)
def test_store_and_retrieve_byte_identical(gateway: Gateway, syntax: str) -> None:
    path = BY_SYNTAX[syntax]
    data = path.read_bytes()
    response = stow(gateway.url, gateway.auth("beta-key-0123456789abcdefghijk"), [data])
    assert response.status_code in (200, 202), response.text
    (item,) = referenced(response.json())
    url = item["00081190"]["Value"][0]
    auth = gateway.auth("beta-key-0123456789abcdefghijk")
    got = httpx.get(url, headers={**auth, "Accept": "application/dicom"})
    assert got.status_code == 200
    assert got.content == data
    # Labelled with the syntax it is in (no parameter would mean Explicit VR Little Endian, PS3.18 8.7.3.5.2).
    assert got.headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
    study = url.split("/studies/")[1].split("/")[0]
    whole = httpx.get(url.split("/series/")[0], headers=auth)
    assert whole.status_code == 200 and study in url
    assert f"Content-Type: application/dicom; transfer-syntax={syntax}\r\n".encode() in whole.content


def test_every_bundled_file_gets_an_answer_not_a_crash(gateway: Gateway) -> None:
    for i in range(0, len(TEST_FILES), 25):
        batch = TEST_FILES[i : i + 25]
        response = stow(gateway.url, gateway.auth(), [p.read_bytes() for p in batch])
        assert response.status_code in (200, 202, 400, 409), (response.status_code, response.text[:300])
        body = response.json()
        assert len(referenced(body)) + len(failed(body)) == len(batch)
        for item in failed(body):
            code = item["00081197"]["Value"][0]
            assert 0xC000 <= code <= 0xCFFF or code == 0x0111, (hex(code), item)
