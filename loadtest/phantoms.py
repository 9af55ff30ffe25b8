"""Synthetic CT-slice-like phantoms: the training data of the reference model, and test/benchmark input.

Numpy only (the training script imports it from its own environment). A phantom is an axial "slice" in
HU-like units: air, a body ellipse, two lungs or none, a few soft-tissue organs, a spine, smooth texture
and noise; with a lesion, one small round blob (radius 2-5 px at 128x128) of varying contrast and position.
:func:`to_ct_dataset` wraps one as a CT DICOM dataset with a rescale slope/intercept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

IMAGE_SIZE = 128
HEATMAP_SIZE = 32
WINDOW_CENTER = 40.0
WINDOW_WIDTH = 400.0

FloatImage = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Phantom:
    hu: FloatImage  # (size, size) HU-like values
    heat: FloatImage  # (HEATMAP_SIZE, HEATMAP_SIZE) localisation target in 0..1
    lesion: tuple[float, float, float] | None  # row, col, radius in pixels


def _ellipse(
    yy: npt.NDArray[Any], xx: npt.NDArray[Any], cy: float, cx: float, ry: float, rx: float, angle: float
) -> npt.NDArray[np.bool_]:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    inside: npt.NDArray[np.bool_] = u * u + v * v <= 1.0
    return inside


def _upsample_axis(coarse: npt.NDArray[Any], n: int, axis: int) -> npt.NDArray[Any]:
    m = coarse.shape[axis]
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, m - 1)
    frac = (pos - i0).astype(np.float32)
    a, b = np.take(coarse, i0, axis=axis), np.take(coarse, i1, axis=axis)
    shape = [1, 1]
    shape[axis] = n
    out: npt.NDArray[Any] = a + (b - a) * frac.reshape(shape)
    return out


def smooth_noise(rng: np.random.Generator, size: int, scale: int) -> FloatImage:
    coarse = rng.standard_normal((size // scale + 2, size // scale + 2)).astype(np.float32)
    out: FloatImage = _upsample_axis(_upsample_axis(coarse, size, 0), size, 1).astype(np.float32)
    return out


def make_phantom(rng: np.random.Generator, with_lesion: bool, size: int = IMAGE_SIZE) -> Phantom:
    n = size
    k = size / IMAGE_SIZE  # lengths below are for 128x128
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img = np.full((n, n), -1000.0, dtype=np.float32)
    cy, cx = n / 2 + rng.uniform(-6, 6) * k, n / 2 + rng.uniform(-6, 6) * k
    ry, rx = rng.uniform(0.30, 0.42) * n, rng.uniform(0.38, 0.47) * n
    body_angle = rng.uniform(-0.2, 0.2)
    body = _ellipse(yy, xx, cy, cx, ry, rx, body_angle)
    img[body] = rng.uniform(20, 60)
    if rng.random() < 0.5:  # lungs
        for side in (-1, 1):
            lung = _ellipse(
                yy, xx, cy + rng.uniform(-5, 5) * k, cx + side * rx * 0.45, ry * 0.6, rx * 0.3, rng.uniform(-0.3, 0.3)
            )
            img[lung & body] = rng.uniform(-850, -650)
    for _ in range(int(rng.integers(2, 5))):
        oy, ox = cy + rng.uniform(-0.5, 0.5) * ry, cx + rng.uniform(-0.5, 0.5) * rx
        organ = _ellipse(yy, xx, oy, ox, rng.uniform(10, 22) * k, rng.uniform(10, 22) * k, rng.uniform(0, np.pi))
        img[organ & body] = rng.uniform(-100, 180)
    spine = _ellipse(yy, xx, cy + ry * 0.7, cx, 6 * k, 6 * k, 0.0)
    img[spine & body] = rng.uniform(300, 700)
    img += body * smooth_noise(rng, n, max(1, int(8 * k))) * rng.uniform(5, 20)

    heat = np.zeros((HEATMAP_SIZE, HEATMAP_SIZE), dtype=np.float32)
    lesion = None
    if with_lesion:
        ly, lx = cy, cx
        for _ in range(100):
            ly, lx = cy + rng.uniform(-0.75, 0.75) * ry, cx + rng.uniform(-0.75, 0.75) * rx
            if _ellipse(np.array(ly), np.array(lx), cy, cx, ry * 0.85, rx * 0.85, body_angle):
                break
        radius = rng.uniform(2.0, 5.0) * k
        contrast = rng.choice([-1.0, 1.0]) * rng.uniform(60, 160)
        if img[int(ly), int(lx)] < -300:  # in a lung a solid nodule is bright
            contrast = abs(contrast) + 700
        dist = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2)
        img += (contrast * 0.5 * (1.0 - np.tanh((dist - radius) / (1.4 * k))) * body).astype(np.float32)
        # Heatmap cell centres in pixel coordinates are (i + 0.5) * n / HEATMAP_SIZE - 0.5.
        scale = HEATMAP_SIZE / n
        hy, hx = np.mgrid[0:HEATMAP_SIZE, 0:HEATMAP_SIZE].astype(np.float32)
        sigma = max(1.0, radius * scale)
        d2 = (hy + 0.5 - (ly + 0.5) * scale) ** 2 + (hx + 0.5 - (lx + 0.5) * scale) ** 2
        heat = np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32)
        lesion = (float(ly), float(lx), float(radius))
    img += rng.standard_normal((n, n)).astype(np.float32) * rng.uniform(8, 25)
    return Phantom(hu=img, heat=heat, lesion=lesion)


def window(hu: npt.NDArray[Any]) -> FloatImage:
    """The soft-tissue window the spec applies to CT (centre 40, width 400) mapped to 0..1."""
    out: FloatImage = np.clip((hu - (WINDOW_CENTER - WINDOW_WIDTH / 2)) / WINDOW_WIDTH, 0.0, 1.0).astype(np.float32)
    return out


def to_ct_dataset(hu: npt.NDArray[Any], sop_instance_uid: str | None = None) -> Any:
    """A CT Image Storage dataset (Explicit VR Little Endian) holding ``hu`` with slope 1, intercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from loadtest.synthetic import set_grayscale_pixels  # here, not at the top: train.py loads this file alone

    stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid) if sop_instance_uid else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    set_grayscale_pixels(ds, stored, bits_stored=12)
    return ds
