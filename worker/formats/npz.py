"""Reading the .npz objects the pipeline writes between stages (worker/formats/prepared.py, outputs.py)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import numpy.typing as npt

MALFORMED = (OSError, KeyError, IndexError, ValueError, EOFError, zipfile.BadZipFile)
"""What reading a damaged, truncated or foreign object raises; each codec turns it into one ValueError."""


def read_arrays(data: bytes) -> dict[str, npt.NDArray[np.generic]]:
    """Every array of ``data`` (no pickles), each read and inflated once: numpy's ``NpzFile`` reads an
    array again on every ``z[name]``, which made a per-instance loop quadratic."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {name: z[name] for name in z.files}
