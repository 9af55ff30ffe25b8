"""``infer_files``: one JSON line per file, errors as lines, exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file

from cli.infer import EXIT_OK, EXIT_SOME_FAILED, EXIT_TRITON_UNUSABLE, infer_files, infer_files_async
from loadtest.phantoms import make_phantom, to_ct_dataset
from tests.inference.conftest import TritonServer, free_port


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(str(path))


def test_infer_files(triton: TritonServer, tmp_path: Path) -> None:
    phantom = tmp_path / "phantom.dcm"
    to_ct_dataset(make_phantom(np.random.default_rng(3), with_lesion=True).hu).save_as(
        phantom, enforce_file_format=True
    )
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM\n")
    paths = [phantom, _testdata("CT_small.dcm"), text, _testdata("MR_small_RLE.dcm"), _testdata("MR_truncated.dcm")]
    out = io.StringIO()

    code = infer_files(paths, triton.grpc_url, triton.settings, out=out)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in paths]
    assert code == EXIT_SOME_FAILED
    for index in (0, 1, 3):
        line = lines[index]
        assert "error" not in line, line
        assert line["model"] == {"name": "lesion_detector", "version": "1"}
        assert 0.0 <= line["outputs"]["probability"] <= 1.0
        assert line["outputs"]["label"] in {"lesion", "no lesion"}
        assert set(line["outputs"]["peak"]) == {"row", "col"}
        assert line["sop_instance_uid"]
        assert {"decode", "preprocess", "queue", "infer"} <= set(line["timings_ms"])
    assert lines[2]["error"].startswith("PreprocessError")
    assert "not a readable DICOM file" in lines[2]["error"]
    assert "cannot decode pixel data" in lines[4]["error"]
    assert "outputs" not in lines[2]
    assert "outputs" not in lines[4]


def test_all_good_files_exit_zero(triton: TritonServer) -> None:
    out = io.StringIO()
    assert infer_files([_testdata("CT_small.dcm")], triton.grpc_url, triton.settings, out=out) == EXIT_OK
    assert json.loads(out.getvalue())["outputs"]["label"] in {"lesion", "no lesion"}


async def test_unreachable_triton(triton: TritonServer) -> None:
    out = io.StringIO()
    url = f"127.0.0.1:{free_port()}"
    code = await infer_files_async([_testdata("CT_small.dcm")], url, triton.settings, out, readiness_timeout_s=0.3)
    assert code == EXIT_TRITON_UNUSABLE
    line = json.loads(out.getvalue())
    assert "unreachable" in line["error"]
    assert url in line["error"]
