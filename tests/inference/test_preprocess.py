"""Preprocessing of pydicom's bundled files, one or more per transfer syntax the plugins decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from worker.models.errors import PreprocessError
from worker.models.preprocess import (
    LUMINANCE,
    prepare,
    prepare_async,
    read_dataset,
    resample_matrix,
    resize,
    to_tensor,
)
from worker.models.spec import ModelSpec

# file -> transfer syntax it is encoded with (checked, so a renamed fixture cannot silently drop coverage)
DECODABLE = {
    "CT_small.dcm": ExplicitVRLittleEndian,
    "MR_small.dcm": ExplicitVRLittleEndian,
    "MR_small_implicit.dcm": ImplicitVRLittleEndian,
    "MR_small_bigendian.dcm": ExplicitVRBigEndian,
    "image_dfl.dcm": DeflatedExplicitVRLittleEndian,
    "SC_rgb_jpeg_dcmtk.dcm": JPEGBaseline8Bit,
    "SC_rgb_dcmtk_+eb+cy+np.dcm": JPEGBaseline8Bit,
    "examples_ybr_color.dcm": JPEGBaseline8Bit,
    "JPGExtended.dcm": JPEGExtended12Bit,
    "SC_rgb_jpeg_gdcm.dcm": JPEGLosslessSV1,
    "MR_small_jpeg_ls_lossless.dcm": JPEGLSLossless,
    "JPEGLSNearLossless_16.dcm": JPEGLSNearLossless,
    "MR_small_jp2klossless.dcm": JPEG2000Lossless,
    "693_J2KI.dcm": JPEG2000,
    "JPEG2000.dcm": JPEG2000,
    "MR_small_RLE.dcm": RLELossless,
    "SC_rgb_rle_2frame.dcm": RLELossless,
    "examples_palette.dcm": ExplicitVRLittleEndian,
}
# Lossless encodings of MR_small.dcm: identical pixels, so identical tensors.
MR_SMALL_LOSSLESS = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
]


def _read(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    return read_dataset(Path(str(path)))


@pytest.mark.parametrize("name", sorted(DECODABLE))
def test_decodable_files(name: str, spec: ModelSpec) -> None:
    ds = _read(name)
    assert ds.file_meta.TransferSyntaxUID == DECODABLE[name]
    prepared = prepare(ds, spec)
    assert prepared.tensor.shape == spec.input.shape
    assert prepared.tensor.dtype == np.float32
    assert np.isfinite(prepared.tensor).all()
    lo = (0.0 - spec.preprocessing.mean) / spec.preprocessing.std
    hi = (1.0 - spec.preprocessing.mean) / spec.preprocessing.std
    assert prepared.tensor.min() >= lo - 1e-5
    assert prepared.tensor.max() <= hi + 1e-5
    assert prepared.tensor.std() > 0.05, "image should not be flat"
    assert prepared.source_shape == (ds.Rows, ds.Columns)
    assert prepared.sop_instance_uid == ds.SOPInstanceUID
    assert set(prepared.timings_ms) == {"decode", "preprocess"}


@pytest.mark.parametrize("name", MR_SMALL_LOSSLESS)
def test_lossless_syntaxes_give_identical_tensors(name: str, spec: ModelSpec) -> None:
    reference = prepare(_read("MR_small.dcm"), spec).tensor
    np.testing.assert_array_equal(prepare(_read(name), spec).tensor, reference)


def test_ct_rescale_and_spec_window(spec: ModelSpec) -> None:
    ds = _read("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = spec.preprocessing.window_by_modality["CT"]
    expected = np.clip((hu - (window.center - window.width / 2)) / window.width, 0, 1)
    expected = (expected - spec.preprocessing.mean) / spec.preprocessing.std
    np.testing.assert_allclose(prepare(ds, spec).tensor[0], expected, atol=1e-5)


def test_monochrome1_is_inverted(spec: ModelSpec) -> None:
    ds = _read("MR_small.dcm")
    normal = prepare(ds, spec).tensor
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = prepare(ds, spec).tensor
    mean, std = spec.preprocessing.mean, spec.preprocessing.std
    np.testing.assert_allclose(inverted * std + mean, 1.0 - (normal * std + mean), atol=1e-5)


def test_dataset_window_is_used_when_the_spec_has_none(spec: ModelSpec) -> None:
    ds = _read("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 600, 200
    pixels = ds.pixel_array.astype(np.float64)
    expected = (np.clip((pixels - 500) / 200, 0, 1) - spec.preprocessing.mean) / spec.preprocessing.std
    tensor = prepare(ds, spec).tensor[0]
    np.testing.assert_allclose(tensor, resize(expected, *spec.image_size), atol=1e-5)


@pytest.mark.parametrize(("name", "frames"), [("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30)])
def test_multiframe_uses_the_middle_frame(name: str, frames: int, spec: ModelSpec) -> None:
    ds = _read(name)
    assert int(ds.NumberOfFrames) == frames
    prepared = prepare(ds, spec)
    assert prepared.frame_index == frames // 2
    frame = pixel_array(ds, index=frames // 2).astype(np.float64) @ LUMINANCE
    np.testing.assert_allclose(prepared.tensor, to_tensor(frame, ds, spec), atol=1e-6)
    other = pixel_array(ds, index=0).astype(np.float64) @ LUMINANCE
    assert not np.allclose(prepared.tensor, to_tensor(other, ds, spec))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("MR_truncated.dcm", "cannot decode pixel data"),
        ("test-SR.dcm", "no pixel data"),
        ("no_meta.dcm", "not a readable DICOM file"),
    ],
)
def test_undecodable_files_raise_typed_errors(name: str, message: str, spec: ModelSpec) -> None:
    with pytest.raises(PreprocessError, match=message):
        prepare(_read(name), spec)


def test_non_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(PreprocessError, match="not a readable DICOM file"):
        read_dataset(path)


def test_resample_matrix() -> None:
    for n_in, n_out in [(512, 128), (100, 128), (3, 128), (128, 128), (1024, 128)]:
        weights = resample_matrix(n_in, n_out)
        assert weights.shape == (n_out, n_in)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_array_equal(resample_matrix(128, 128), np.eye(128))
    image = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.testing.assert_allclose(resize(image, 2, 2), [[2.5, 4.5], [10.5, 12.5]])


async def test_prepare_async_matches_prepare(spec: ModelSpec) -> None:
    ds = _read("CT_small.dcm")
    result = await prepare_async(ds, spec)
    np.testing.assert_array_equal(result.tensor, prepare(ds, spec).tensor)
