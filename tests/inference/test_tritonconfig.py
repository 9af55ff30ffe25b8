"""One source, two Triton configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.inference.conftest import MODEL_REPOSITORY
from worker.models.spec import ModelSpec, Serving
from worker.models.tritonconfig import (
    PYTHON_BACKEND_MODEL,
    build_local_repository,
    local_config,
    production_config,
)


def test_committed_production_config_is_generated(spec: ModelSpec) -> None:
    committed = (MODEL_REPOSITORY / spec.name / "config.pbtxt").read_text()
    assert committed == production_config(spec), "run: python -m worker.models.tritonconfig"


def test_production_config_content(spec: ModelSpec) -> None:
    text = production_config(spec)
    assert 'backend: "onnxruntime"' in text
    assert "kind: KIND_GPU" in text
    assert f"max_batch_size: {spec.serving.production_max_batch_size}" in text
    assert f"max_queue_delay_microseconds: {spec.serving.max_queue_delay_microseconds}" in text
    assert 'name: "image"' in text
    assert "dims: [ 1, 128, 128 ]" in text
    assert 'name: "heatmap"' in text
    assert "dims: [ 1, 32, 32 ]" in text
    assert "python" not in text


def test_local_config_wraps_the_same_model(spec: ModelSpec) -> None:
    text = local_config(spec)
    assert 'backend: "python"' in text
    assert "kind: KIND_CPU" in text
    assert "dynamic_batching" in text
    assert 'key: "intra_op_num_threads", value: { string_value: "1" }' in text
    # Everything but the backend, the instance kind and the parameters is identical.
    common = [line for line in production_config(spec).splitlines() if "TYPE_" in line or "dims" in line]
    assert all(line in text.splitlines() for line in common)


def test_build_local_repository(tmp_path: Path, spec: ModelSpec) -> None:
    target = tmp_path / "repo"
    (target / "stale_model" / "1").mkdir(parents=True)
    served = build_local_repository(MODEL_REPOSITORY, target)
    assert [s.name for s in served] == [spec.name]
    assert not (target / "stale_model").exists()
    version_dir = target / spec.name / spec.version
    assert (version_dir / "model.onnx").read_bytes() == spec.model_path(MODEL_REPOSITORY).read_bytes()
    assert (version_dir / "model.py").read_text() == PYTHON_BACKEND_MODEL.read_text()
    assert (target / spec.name / "config.pbtxt").read_text() == local_config(spec)
    # Rebuilding is idempotent.
    build_local_repository(MODEL_REPOSITORY, target)
    assert sorted(p.name for p in target.iterdir()) == [spec.name]


def test_onnx_file_is_small(spec: ModelSpec) -> None:
    assert spec.model_path(MODEL_REPOSITORY).stat().st_size < 5 * 1024 * 1024


def _limit_and_preferred(text: str) -> tuple[str, str]:
    lines = text.splitlines()
    limit = next(line for line in lines if line.startswith("max_batch_size:"))
    preferred = next(line.strip() for line in lines if "preferred_batch_size" in line)
    return limit, preferred


def test_gpu_servers_batch_further_than_workers_do(spec: ModelSpec) -> None:
    # The GPU config lets Triton merge several workers' batches; the CPU config and the workers stop at 32.
    serving = spec.serving.model_copy(
        update={"max_batch_size": 32, "gpu_max_batch_size": 128, "preferred_batch_sizes": (8, 16, 32, 64, 128)}
    )
    custom = spec.model_copy(update={"serving": serving})
    assert _limit_and_preferred(production_config(custom)) == (
        "max_batch_size: 128",
        "preferred_batch_size: [ 8, 16, 32, 64, 128 ]",
    )
    assert _limit_and_preferred(local_config(custom)) == ("max_batch_size: 32", "preferred_batch_size: [ 8, 16, 32 ]")


def test_without_a_gpu_limit_both_configs_share_one(spec: ModelSpec) -> None:
    serving = Serving(max_batch_size=16, preferred_batch_sizes=(4, 16, 32))
    custom = spec.model_copy(update={"serving": serving})
    assert serving.production_max_batch_size == 16
    for text in (production_config(custom), local_config(custom)):
        assert _limit_and_preferred(text) == ("max_batch_size: 16", "preferred_batch_size: [ 4, 16 ]")


def test_a_gpu_limit_below_the_workers_batches_is_refused() -> None:
    with pytest.raises(ValidationError, match="gpu_max_batch_size 16 is below max_batch_size 32"):
        Serving(max_batch_size=32, gpu_max_batch_size=16)
