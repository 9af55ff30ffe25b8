"""The local Triton launcher's process description."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from infra.local.triton import triton_process_spec
from radstream.settings import Settings
from tests.inference.conftest import MODEL_REPOSITORY


def test_process_spec_binds_loopback_and_builds_the_repository(tmp_path: Path) -> None:
    settings = Settings(
        triton_grpc_url="127.0.0.1:18101",
        triton_http_port=18100,
        triton_metrics_port=18102,
        model_repository=MODEL_REPOSITORY,
        state_dir=tmp_path,
    )
    spec = triton_process_spec(settings)
    args = set(spec.argv[1:])
    assert Path(spec.argv[0]).name == "tritonserver"
    assert Path(spec.argv[0]).is_file()
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in args
    assert {"--http-port=18100", "--grpc-port=18101", "--metrics-port=18102"} <= args
    assert f"--model-repository={tmp_path / 'triton-repo'}" in args
    assert (tmp_path / "triton-repo" / "lesion_detector" / "1" / "model.onnx").is_file()
    assert (tmp_path / "triton-backends" / "python" / "triton_python_backend_stub").is_file()
    assert str(sysconfig.get_config_var("LIBDIR")) in spec.env["LD_LIBRARY_PATH"].split(":")
    assert sysconfig.get_paths()["purelib"] in spec.env["PYTHONPATH"]
    assert spec.ready is not None
    assert spec.ready() is False  # nothing listens on that port
