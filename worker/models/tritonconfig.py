"""One source, two Triton configs, both generated from a model's ``spec.json``.

* :func:`production_config`: the committed ``triton/models/<name>/config.pbtxt`` for the GPU pods
  (onnxruntime backend, ``KIND_GPU``, dynamic batching). A test checks that the committed file equals
  what this function produces; regenerate with ``python -m worker.models.tritonconfig``.
* :func:`build_local_repository`: a model repository for the local ``tritonserver`` binary, which ships
  with the python backend only. Each model wraps the same ONNX file with ``triton/python_backend/model.py``
  (onnxruntime on CPU, ``KIND_CPU``) with the same batching settings.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from worker.models.spec import ModelSpec, TensorSpec, load_specs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PYTHON_BACKEND_MODEL = PROJECT_ROOT / "triton" / "python_backend" / "model.py"
CONFIG_FILE = "config.pbtxt"

Target = Literal["production", "local"]


def _dims(shape: Iterable[int]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _tensor(tensor: TensorSpec) -> str:
    return (
        f'  {{\n    name: "{tensor.name}"\n    data_type: TYPE_{tensor.datatype}\n    dims: {_dims(tensor.shape)}\n  }}'
    )


def render_config(spec: ModelSpec, target: Target) -> str:
    """The ``config.pbtxt`` text of ``spec`` for ``target``."""
    serving = spec.serving
    outputs = (spec.outputs.probability, spec.outputs.heatmap)
    lines = [
        f"# Generated from spec.json by worker/models/tritonconfig.py ({target}); do not edit by hand.",
        f'name: "{spec.name}"',
    ]
    if target == "production":
        lines += [
            'platform: "onnxruntime_onnx"',
            'backend: "onnxruntime"',
            f'default_model_filename: "{spec.model_file}"',
        ]
    else:
        lines += ['backend: "python"']
    limit = serving.production_max_batch_size if target == "production" else serving.max_batch_size
    lines += [
        f"max_batch_size: {limit}",
        "version_policy: { specific: { versions: [ " + spec.version + " ] } }",
        "input [\n" + _tensor(spec.input) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]",
    ]
    dynamic = ["dynamic_batching {"]
    if serving.preferred_batch_sizes:
        sizes = ", ".join(str(s) for s in serving.preferred_batch_sizes if s <= limit)
        dynamic.append(f"  preferred_batch_size: [ {sizes} ]")
    dynamic += [f"  max_queue_delay_microseconds: {serving.max_queue_delay_microseconds}", "}"]
    lines.append("\n".join(dynamic))
    if target == "production":
        lines.append(f"instance_group [\n  {{ count: {serving.gpu_instance_count}, kind: KIND_GPU }}\n]")
    else:
        lines.append(
            "instance_group [\n"
            f"  {{ count: {serving.cpu_instance_count}, kind: KIND_CPU }}\n"
            "]\n"
            "parameters [\n"
            f'  {{ key: "onnx_file", value: {{ string_value: "{spec.model_file}" }} }},\n'
            '  { key: "intra_op_num_threads", value: { string_value: "1" } }\n'
            "]"
        )
    return "\n".join(lines) + "\n"


def production_config(spec: ModelSpec) -> str:
    return render_config(spec, "production")


def local_config(spec: ModelSpec) -> str:
    return render_config(spec, "local")


def write_production_configs(repository: Path) -> list[Path]:
    """(Re)write ``<repository>/<name>/config.pbtxt`` for every spec; returns the paths written."""
    written = []
    for spec in load_specs(repository):
        path = repository / spec.name / CONFIG_FILE
        path.write_text(production_config(spec))
        written.append(path)
    return written


def _copy_if_changed(src: Path, dst: Path) -> None:
    if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def build_local_repository(repository: Path, target: Path) -> list[ModelSpec]:
    """Generate the python-backend model repository for every spec of ``repository`` into ``target``.

    Models no longer in ``repository`` are removed from ``target``. The ONNX files are copied (they are
    small) so that the local repository never points at a half-written file. Returns the specs served.
    """
    specs = load_specs(repository)
    target.mkdir(parents=True, exist_ok=True)
    names = {spec.name for spec in specs}
    for stale in target.iterdir():
        if stale.is_dir() and stale.name not in names:
            shutil.rmtree(stale)
    for spec in specs:
        model_dir = target / spec.name
        version_dir = model_dir / spec.version
        if model_dir.exists():
            for old in model_dir.iterdir():
                if old.is_dir() and old.name != spec.version:
                    shutil.rmtree(old)
        version_dir.mkdir(parents=True, exist_ok=True)
        _copy_if_changed(spec.model_path(repository), version_dir / spec.model_file)
        _copy_if_changed(PYTHON_BACKEND_MODEL, version_dir / "model.py")
        (model_dir / CONFIG_FILE).write_text(local_config(spec))
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description="Regenerate the production config.pbtxt of every model.")
    parser.add_argument("repository", type=Path, nargs="?", default=PROJECT_ROOT / "triton" / "models")
    args = parser.parse_args()
    for path in write_production_configs(args.repository):
        print(path)


if __name__ == "__main__":
    main()
