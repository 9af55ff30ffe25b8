"""Model specs: loading, validation and matching by modality and SOP class."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, MRImageStorage

from tests.inference.conftest import MODEL_REPOSITORY
from worker.models.errors import SpecError
from worker.models.spec import ModelSpec, load_specs, match_model


def test_reference_spec_loads(spec: ModelSpec) -> None:
    assert spec.name == "lesion_detector"
    assert spec.version == "1"
    assert spec.input.name == "image"
    assert spec.input.shape == (1, 128, 128)
    assert spec.image_size == (128, 128)
    assert spec.heatmap_size == (32, 32)
    assert spec.model_path(MODEL_REPOSITORY).is_file()
    assert spec.preprocessing.window_by_modality["CT"].width == 400.0


def test_match_by_modality_and_sop_class(specs: list[ModelSpec]) -> None:
    assert match_model(specs, "CT", CTImageStorage) is not None
    assert match_model(specs, "US", "1.2.840.10008.5.1.4.1.1.6.1") is None
    restricted = specs[0].model_copy(update={"sop_class_uids": (MRImageStorage,)})
    assert match_model([restricted], "MR", MRImageStorage) is restricted
    assert match_model([restricted], "MR", CTImageStorage) is None


def _copy_model(repository: Path, name: str, **changes: object) -> None:
    source = MODEL_REPOSITORY / "lesion_detector"
    target = repository / name
    shutil.copytree(source, target)
    data = json.loads((target / "spec.json").read_text())
    data.update({"name": name, **changes})
    (target / "spec.json").write_text(json.dumps(data))


def test_second_model_is_a_new_folder(tmp_path: Path) -> None:
    _copy_model(tmp_path, "lesion_detector")
    _copy_model(tmp_path, "chest_xray", modalities=["CR", "DX"])
    specs = load_specs(tmp_path)
    assert [s.name for s in specs] == ["chest_xray", "lesion_detector"]
    chosen = match_model(specs, "DX", "1.2.840.10008.5.1.4.1.1.1.1")
    assert chosen is not None
    assert chosen.name == "chest_xray"
    chosen = match_model(specs, "CT", CTImageStorage)
    assert chosen is not None
    assert chosen.name == "lesion_detector"


def test_folder_and_name_must_agree(tmp_path: Path) -> None:
    _copy_model(tmp_path, "other")
    data = json.loads((tmp_path / "other" / "spec.json").read_text())
    data["name"] = "not_other"
    (tmp_path / "other" / "spec.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match="differs from its folder"):
        load_specs(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input", {"name": "image", "datatype": "FP32", "shape": [128, 128]}, "input shape"),
        ("input", {"name": "image", "datatype": "UINT8", "shape": [1, 128, 128]}, "FP32"),
        ("modalities", [], "at least 1"),
        ("unknown_field", 1, "Extra inputs"),
    ],
)
def test_invalid_specs_are_refused(tmp_path: Path, field: str, value: object, message: str) -> None:
    _copy_model(tmp_path, "broken", **{field: value})
    with pytest.raises(SpecError, match=message):
        load_specs(tmp_path)
