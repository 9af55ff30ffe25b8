"""read_header's bounds: it reads groups 0002 to 0020 only, at most HEADER_LIMIT_BYTES of them, and a
deflated data set is inflated as a stream under MAX_INFLATED_BYTES (a deflate bomb is refused, not held)."""

from __future__ import annotations

import io
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian

from loadtest import synthetic
from radstream import dicom
from radstream.dicom import read_header
from radstream.errors import DicomPartError, FailureReason


def _part10(ds: Dataset, body: bytes | None = None) -> bytes:
    """Preamble, File Meta and ``body`` (default: ``ds`` encoded as Explicit VR Little Endian)."""
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    if body is None:
        encoded = DicomBytesIO()
        encoded.is_little_endian, encoded.is_implicit_VR = True, False
        write_dataset(encoded, ds)
        body = encoded.getvalue()
    out.write(body)
    return out.getvalue()


def _deflated(ds: Dataset, padding: int) -> bytes:
    """``ds`` deflated, followed inside the deflate stream by ``padding`` zero bytes (a private OB value)."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, ds)
    raw = encoded.getvalue() + b"\xe1\x7f\x10\x10OB\0\0" + padding.to_bytes(4, "little") + b"\0" * padding
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return _part10(ds, compressor.compress(raw) + compressor.flush())


def test_a_deflated_instance_is_read_from_its_beginning() -> None:
    ds = synthetic.ct_slice(synthetic.StudyUids.new(), 0, rows=16, cols=16)
    header = read_header(io.BytesIO(_deflated(ds, padding=1000)))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_a_deflate_bomb_is_refused_without_being_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "MAX_INFLATED_BYTES", 4 * 1024 * 1024)
    data = _deflated(synthetic.ct_slice(synthetic.StudyUids.new(), 0, rows=16, cols=16), padding=8 * 1024 * 1024)
    assert len(data) < 64 * 1024  # 8 MiB of zeros deflate to a few KiB
    with pytest.raises(DicomPartError, match="inflates to more than 4194304 bytes") as refused:
        read_header(io.BytesIO(data))
    assert refused.value.reason is FailureReason.CANNOT_UNDERSTAND


def test_a_header_larger_than_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "HEADER_LIMIT_BYTES", 64 * 1024)
    ds = synthetic.ct_slice(synthetic.StudyUids.new(), 0, rows=16, cols=16)
    ds.ReferencedImageSequence = Sequence(  # (0008,1140): before the study and series UIDs
        [Dataset() for _ in range(2000)]
    )
    for item in ds.ReferencedImageSequence:
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    with pytest.raises(DicomPartError, match="larger than 65536 bytes"):
        read_header(io.BytesIO(_part10(ds)))


def test_nothing_after_group_0020_is_read() -> None:
    """A stream cut off right after the Series Instance UID's group: what follows is the pipeline's concern."""
    ds = synthetic.ct_slice(synthetic.StudyUids.new(), 0, rows=16, cols=16)
    data = _part10(ds)
    routing = Dataset()
    for element in ds:
        if element.tag <= 0x0020FFFF:
            routing.add(element)
    routing.file_meta = ds.file_meta
    cut = len(_part10(routing))
    header = read_header(io.BytesIO(data[:cut] + b"\x28\x00\x10\x00US\x02"))  # a truncated (0028,0010)
    assert (header.study_instance_uid, header.series_instance_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
