"""Fixtures of the results tests: a study, strict DICOM writing, and a dciodvfy runner."""

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from results_sources import Study, Verification, blob_heatmap, make_ct_series, make_dx, make_output


@pytest.fixture
def study() -> Study:
    """CT slices (2 positive, 1 negative) and a positive DX image in one study."""
    study_uid = generate_uid()
    ct = make_ct_series(study_uid)
    dx = make_dx(study_uid)
    outputs = [
        make_output(ct[0], 0.92, blob_heatmap(10, 12)),
        make_output(ct[1], 0.71, blob_heatmap(20, 8)),
        make_output(ct[2], 0.08, np.full((32, 32), 0.05, dtype=np.float32)),
        make_output(dx, 0.66, blob_heatmap(5, 25)),
    ]
    return Study(ct=ct, dx=dx, outputs=outputs)


@pytest.fixture(autouse=True)
def enforce_valid_values() -> Iterator[None]:
    """Refuse to write invalid values (the writer raises instead of warning)."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


@pytest.fixture
def dciodvfy(tmp_path: Path) -> Callable[[bytes], Verification]:
    """Run dciodvfy (Debian package dicom3tools) on DICOM bytes and parse its report."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.fail("dciodvfy not found: install it with `apt-get install -y dicom3tools`")

    def verify(data: bytes) -> Verification:
        path = tmp_path / f"object-{len(list(tmp_path.iterdir()))}.dcm"
        path.write_bytes(data)
        result = subprocess.run(
            [executable, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        lines = (result.stdout + result.stderr).splitlines()
        return Verification(
            errors=[line for line in lines if line.startswith("Error")],
            warnings=[line for line in lines if line.startswith("Warning")],
            output="\n".join(lines),
        )

    return verify
