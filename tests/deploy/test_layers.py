"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and they can fail: an import that runs
up the layers, or one that closes a circle, breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

PACKAGES = ("cli", "loadtest", "infra", "gateway", "worker", "radstream")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, to break."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layers_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("radstream/keys.py", "import infra.local.stack", "Layers: the CLI on top"),  # the core imports the stack
        ("worker/formats/npz.py", "import worker.stages.store", "worker: the two deployables"),
        ("gateway/metrics.py", "import gateway.dicomweb.stow", "No circles"),  # stow imports metrics
        ("radstream/aws/s3.py", "import radstream.clients", "core: the composition root"),
    ],
)
def test_an_import_against_the_contracts_fails(tree: Path, module: str, line: str, broken: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert broken in result.stdout.split("Broken contracts")[-1], result.stdout
