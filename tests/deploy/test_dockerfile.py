"""The Dockerfile: hadolint, plus the properties the deployment relies on (read from the file itself)."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
from dataclasses import dataclass, field

import pytest
import yaml

from infra.local.processes import SINGLE_THREADED_MATH
from infra.resources import LAMBDA_FUNCTIONS
from tests.deploy.conftest import CHART, ROOT, TEMPLATE, Tools, load_cfn

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|cmake|cargo|rustc|apt-get|apk)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile() -> list[Stage]:
    """Stages of the Dockerfile: comments dropped, continuation lines joined."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            stages.append(Stage(base=match[1], name=match[2]))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile()}


def resolve(stages: dict[str, Stage], name: str) -> str:
    """The external image a stage ultimately builds on."""
    base = stages[name].base
    return resolve(stages, base) if base in stages else base


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last value of an instruction in a stage or the stages it is built FROM."""
    value = stages[name].last(keyword)
    if value is None and stages[name].base in stages:
        return effective(stages, stages[name].base, keyword)
    return value


def test_hadolint(tools: Tools) -> None:
    tools.check("hadolint", "--failure-threshold", "info", DOCKERFILE)


def test_external_bases_are_pinned_slim_images(stages: dict[str, Stage]) -> None:
    for name in stages:
        image = resolve(stages, name)
        assert image.startswith("python:3.11"), (name, image)
        assert "slim" in image, (name, image)
        tag = image.split("@")[0].partition(":")[2]
        assert tag, f"{name}: base image has no tag"
        assert tag != "latest", name


def test_default_target_is_the_runtime_image(stages: dict[str, Stage]) -> None:
    assert list(stages)[-1] == "runtime"


@pytest.mark.parametrize("target", ["runtime", "lambda"])
def test_final_images_are_non_root_without_build_tools(stages: dict[str, Stage], target: str) -> None:
    user = effective(stages, target, "USER")
    assert user is not None, target
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric user, so Kubernetes runAsNonRoot can verify it"
    assert int(uid) >= 10000
    chain = [target]
    while stages[chain[-1]].base in stages:
        chain.append(stages[chain[-1]].base)
    for stage_name in chain:
        for command in stages[stage_name].all("RUN"):
            assert not BUILD_TOOLS.search(command), (stage_name, command)
    copies = stages[target].all("COPY")
    assert copies, target
    assert all(c.startswith("--from=build") for c in copies), "final stages copy only the built environment"


def test_dependencies_install_from_the_lock_and_the_app_without_deps(stages: dict[str, Stage]) -> None:
    runs = " ".join(stages["build"].all("RUN"))
    assert "-r requirements.lock" in runs
    assert re.search(r"pip install [^&]*--no-deps[^&]* \.(\s|$)", runs)
    lambda_runs = " ".join(stages["build-lambda"].all("RUN"))
    for package in ("awslambdaric", "simplejson", "snapshot-restore-py"):
        assert re.search(rf"\b{package}==[0-9][^\s]*", lambda_runs), f"{package} is pinned exactly"


def test_gateway_worker_and_lambda_commands(stages: dict[str, Stage]) -> None:
    cmd = json.loads(stages["runtime"].last("CMD") or "null")
    assert cmd == ["uvicorn", "gateway.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8080"]
    assert 'radstream = "cli.main:main"' in (ROOT / "pyproject.toml").read_text()
    assert json.loads(stages["lambda"].last("ENTRYPOINT") or "null") == ["python", "-m", "awslambdaric"]
    assert json.loads(stages["lambda"].last("CMD") or "null")[0].startswith("worker.stages.main.")


def dockerignore_patterns() -> list[str]:
    return [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]


def included(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (the last matching pattern decides)."""
    keep = True
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        if fnmatch.fnmatch(path, glob.rstrip("/")) or path.startswith(glob if glob.endswith("/") else glob + "/"):
            keep = negate
    return keep


def env_of(stages: dict[str, Stage], name: str) -> dict[str, str]:
    """ENV KEY=VALUE pairs of a stage and the stages it is built FROM (later ones win)."""
    env: dict[str, str] = {}
    if stages[name].base in stages:
        env.update(env_of(stages, stages[name].base))
    for args in stages[name].all("ENV"):
        for pair in args.split():
            key, sep, value = pair.partition("=")
            assert sep, f"ENV in KEY=VALUE form: {args}"
            env[key] = value
    return env


def test_dockerignore_keeps_the_context_to_what_is_copied(stages: dict[str, Stage]) -> None:
    patterns = dockerignore_patterns()
    assert patterns[0] == "*"

    sources = []
    for stage in stages.values():
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            sources.extend(args.split()[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert included(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    for secret in (".venv", ".venv-tools", ".radstream", ".git", "tests", "loadtest"):
        assert not included(secret), secret


def test_images_carry_the_model_specs_where_the_settings_point(stages: dict[str, Stage]) -> None:
    (copy,) = [args for args in stages["build"].all("COPY") if args.split()[0] == "triton/models"]
    destination = copy.split()[-1]
    # the final stages copy /opt/radstream from the build stages, so the specs must land inside it
    assert destination.startswith("/opt/radstream/")
    for target in ("runtime", "lambda"):
        assert env_of(stages, target)["RADSTREAM_MODEL_REPOSITORY"] == destination, target
    # the build fails when no spec made it into the image
    assert "load_specs(Path('/opt/radstream/triton/models'))" in " ".join(stages["build"].all("RUN"))
    assert destination == "/opt/radstream/triton/models"
    # the context holds every model's spec.json and nothing else of triton/ (Triton serves the ONNX)
    specs = sorted((ROOT / "triton" / "models").glob("*/spec.json"))
    assert specs
    for path in (ROOT / "triton").rglob("*"):
        if path.is_file():
            relative = path.relative_to(ROOT).as_posix()
            assert included(relative) is (path in specs), relative
    # the Lambda functions and the worker Deployment point at the same folder
    for name, resource in load_cfn(TEMPLATE)["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            assert resource["Properties"]["Environment"]["Variables"]["RADSTREAM_MODEL_REPOSITORY"] == destination, name
    assert yaml.safe_load((CHART / "values.yaml").read_text())["worker"]["modelRepository"] == destination


def test_lambda_image_runs_every_handler_of_infra_resources(stages: dict[str, Stage]) -> None:
    handlers = {handler for handler, _substitution in LAMBDA_FUNCTIONS.values()}
    assert json.loads(stages["lambda"].last("CMD") or "null") in [[h] for h in handlers]
    text = DOCKERFILE.read_text()
    for handler in handlers:
        assert handler in text, f"the Dockerfile's header lists {handler}"
        module, _, function = handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), handler


def test_lambda_image_runs_blas_single_threaded(stages: dict[str, Stage]) -> None:
    """Like the local Lambda runtime (infra/local/processes.py SINGLE_THREADED_MATH)."""
    env = env_of(stages, "lambda")
    for key, value in SINGLE_THREADED_MATH.items():
        if key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            assert env.get(key) == value, key
