"""The local Triton: the real ``tritonserver`` binary bundled with nvidia-pytriton, on CPU.

That build ships the python backend only, so the model repository it serves is generated from the
production specs by :func:`worker.models.tritonconfig.build_local_repository` into
``<state_dir>/triton-repo`` (the same ONNX files, run by onnxruntime inside the python backend).
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from infra.local.errors import TritonNotInstalled
from infra.local.processes import ProcessSpec
from radstream.settings import Settings
from worker.models.tritonconfig import build_local_repository

READY_PROBE_TIMEOUT_S = 1.0
#: Python-backend shared memory between tritonserver and the model stubs; grows on demand.
PYTHON_SHM_DEFAULT_BYTES = 16 * 1024 * 1024
PYTHON_SHM_GROWTH_BYTES = 16 * 1024 * 1024


def _pytriton_dir() -> Path:
    """Where nvidia-pytriton is installed, found without importing it."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled("nvidia-pytriton is not installed; run `make` to install the lock")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def tritonserver_binary() -> Path:
    return _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """A backend directory with the python backend and the stub for this interpreter's version."""
    dist = _pytriton_dir() / "tritonserver"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": dist / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        destination = python_dir / name
        if not destination.exists() or destination.stat().st_size != source.stat().st_size:
            shutil.copy2(source, destination)
    return target


def _library_path() -> str:
    pytriton_libs = _pytriton_dir().parent / "nvidia_pytriton.libs"
    parts = [str(sysconfig.get_config_var("LIBDIR")), str(pytriton_libs)]
    if existing := os.environ.get("LD_LIBRARY_PATH"):
        parts.append(existing)
    return ":".join(parts)


def _grpc_port(grpc_url: str) -> int:
    _, _, port = grpc_url.rpartition(":")
    return int(port)


def model_ready_probe(http_port: int, model_names: list[str]) -> Callable[[], bool]:
    """A cheap, exception-free check that every model answers ``/v2/models/<name>/ready`` with 200."""
    urls = [f"http://127.0.0.1:{http_port}/v2/models/{name}/ready" for name in model_names]

    def ready() -> bool:
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=READY_PROBE_TIMEOUT_S) as response:  # noqa: S310
                    if response.status != 200:
                        return False
            except (urllib.error.URLError, OSError, ValueError):
                return False
        return True

    return ready


def triton_process_spec(settings: Settings) -> ProcessSpec:
    """Build the local model repository and describe the ``tritonserver`` child process."""
    state_dir = settings.state_dir
    repository = state_dir / "triton-repo"
    specs = build_local_repository(settings.model_repository, repository)
    backends = prepare_backends(state_dir / "triton-backends")
    grpc_port = _grpc_port(settings.triton_grpc_url)
    argv = [
        str(tritonserver_binary()),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--allow-http=true",
        "--http-address=127.0.0.1",
        f"--http-port={settings.triton_http_port}",
        "--allow-grpc=true",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={settings.triton_metrics_port}",
        "--allow-sagemaker=false",
        "--allow-vertex-ai=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=10",
        "--log-verbose=0",
        # One shm prefix per server so that several local servers (tests, `radstream up`) coexist.
        f"--backend-config=python,shm-region-prefix-name=radstream{grpc_port}_",
        f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_GROWTH_BYTES}",
    ]
    site_packages = sysconfig.get_paths()["purelib"]
    # The whole parent environment (the supervisor passes ``env`` as the child's complete environment),
    # plus what the binary and the python-backend stub need.
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": _library_path(),
        # The python-backend stub embeds this interpreter's libpython; it imports numpy and onnxruntime
        # from the running environment.
        "PYTHONPATH": os.pathsep.join(filter(None, [site_packages, os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    return ProcessSpec(
        name="triton",
        argv=argv,
        env=env,
        ready=model_ready_probe(settings.triton_http_port, [spec.name for spec in specs]),
        ready_timeout_s=60.0,
    )
