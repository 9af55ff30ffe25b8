"""Model specs: one ``spec.json`` beside each model in the repository describes everything the worker
needs to feed that model and read its answer.

Adding a second model is a new folder ``triton/models/<name>/`` with ``spec.json`` and
``<version>/model.onnx``; no code changes. The Triton configs are generated from the same spec
(:mod:`worker.models.tritonconfig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.models.errors import SpecError

SPEC_FILE = "spec.json"

#: Triton datatypes we support, with their numpy dtype names.
DATATYPES: dict[str, str] = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8", "INT16": "int16"}
Datatype = Literal["FP32", "FP16", "UINT8", "INT16"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """A tensor as Triton sees it; ``shape`` excludes the batch dimension."""

    name: str = Field(min_length=1)
    datatype: Datatype
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> str:
        return DATATYPES[self.datatype]


class Window(_Frozen):
    center: float
    width: float = Field(gt=0)


class Preprocessing(_Frozen):
    """How a DICOM image becomes the input tensor, applied in this order:

    1. decode pixels (the middle frame of a multi-frame image; colour becomes luminance);
    2. modality LUT / rescale slope and intercept when ``apply_rescale``;
    3. MONOCHROME1 inversion when ``invert_monochrome1`` (so that higher is always brighter);
    4. window to 0..1: the spec's window for the modality, else the dataset's first VOI window when
       ``use_dataset_window``, else the ``percentile_range`` of the pixel values;
    5. resize to the input tensor's height and width (area-average then bilinear);
    6. normalise ``(x - mean) / std``.
    """

    apply_rescale: bool = True
    invert_monochrome1: bool = True
    window_by_modality: dict[str, Window] = Field(default_factory=dict)
    use_dataset_window: bool = True
    percentile_range: tuple[float, float] = (1.0, 99.0)
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class Labels(_Frozen):
    positive: str = "lesion"
    negative: str = "no lesion"
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class Outputs(_Frozen):
    """Names of the output tensors by role, and how the probability becomes a label."""

    probability: TensorSpec
    heatmap: TensorSpec
    labels: Labels = Labels()


class Serving(_Frozen):
    """Triton scheduling knobs of the production (GPU) and local (CPU) configs.

    ``max_batch_size`` is what every server of the model accepts: the local config's limit and the largest
    batch a worker sends. ``gpu_max_batch_size`` (default: the same) is the production config's limit, up
    to which Triton's dynamic batcher merges the requests of many workers; a GPU's cost per image keeps
    falling well past the batch one worker forms (``loadtest/bench_gpu.py``), a CPU's does not.
    ``preferred_batch_sizes`` larger than a config's limit are left out of that config.
    """

    max_batch_size: int = Field(32, ge=1)
    gpu_max_batch_size: int | None = Field(None, ge=1)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = Field(2000, ge=0)
    gpu_instance_count: int = Field(1, ge=1)
    cpu_instance_count: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _gpu_limit_covers_worker_batches(self) -> Serving:
        if self.gpu_max_batch_size is not None and self.gpu_max_batch_size < self.max_batch_size:
            raise ValueError(
                f"gpu_max_batch_size {self.gpu_max_batch_size} is below max_batch_size {self.max_batch_size}: "
                "the production server would refuse the batches workers send"
            )
        return self

    @property
    def production_max_batch_size(self) -> int:
        return self.gpu_max_batch_size or self.max_batch_size


class ModelSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field("1", pattern=r"^[0-9]+$")
    description: str = ""
    model_file: str = "model.onnx"
    input: TensorSpec
    outputs: Outputs
    preprocessing: Preprocessing = Preprocessing()
    modalities: tuple[str, ...] = Field(min_length=1)
    sop_class_uids: tuple[str, ...] = Field(default=(), description="empty accepts every SOP class")
    serving: Serving = Serving()

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if len(self.input.shape) != 3 or self.input.shape[0] != 1:
            raise ValueError(f"input shape must be (1, height, width), got {self.input.shape}")
        if self.input.datatype != "FP32":
            raise ValueError("only FP32 image inputs are supported")
        if len(self.outputs.heatmap.shape) != 3 or self.outputs.heatmap.shape[0] != 1:
            raise ValueError(f"heatmap shape must be (1, height, width), got {self.outputs.heatmap.shape}")
        if self.outputs.probability.shape != (1,):
            raise ValueError(f"probability shape must be (1,), got {self.outputs.probability.shape}")
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input.shape[1], self.input.shape[2]

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.outputs.heatmap.shape[1], self.outputs.heatmap.shape[2]

    def accepts(self, modality: str, sop_class_uid: str) -> bool:
        if modality not in self.modalities:
            return False
        return not self.sop_class_uids or sop_class_uid in self.sop_class_uids

    def model_path(self, repository: Path) -> Path:
        return repository / self.name / self.version / self.model_file


def load_spec(path: Path) -> ModelSpec:
    try:
        spec = ModelSpec.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    if spec.name != path.parent.name:
        raise SpecError(f"{path}: model name {spec.name!r} differs from its folder {path.parent.name!r}")
    return spec


def load_specs(repository: Path) -> list[ModelSpec]:
    """Every ``<repository>/<name>/spec.json``, sorted by model name."""
    return [load_spec(path) for path in sorted(repository.glob(f"*/{SPEC_FILE}"))]


def match_model(specs: list[ModelSpec], modality: str, sop_class_uid: str) -> ModelSpec | None:
    """The first spec (by name) accepting this modality and SOP class, or None."""
    for spec in specs:
        if spec.accepts(modality, sop_class_uid):
            return spec
    return None
