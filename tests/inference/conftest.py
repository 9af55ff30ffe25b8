"""A real ``tritonserver`` on free loopback ports, started through the local launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from infra.local.triton import triton_process_spec
from radstream.settings import PROJECT_ROOT, Settings
from worker.inference.triton.client import TritonClient
from worker.models.spec import ModelSpec, load_specs

MODEL_REPOSITORY = PROJECT_ROOT / "triton" / "models"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TritonServer:
    """One tritonserver child process; stopped by its PID only."""

    def __init__(self, state_dir: Path) -> None:
        self.settings = Settings(
            triton_grpc_url=f"127.0.0.1:{free_port()}",
            triton_http_port=free_port(),
            triton_metrics_port=free_port(),
            model_repository=MODEL_REPOSITORY,
            state_dir=state_dir,
        )
        self.log_path = state_dir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return self.settings.triton_grpc_url

    def start(self) -> None:
        spec = triton_process_spec(self.settings)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                spec.argv, env={**os.environ, **spec.env}, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + spec.ready_timeout_s
        assert spec.ready is not None
        while not spec.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"tritonserver did not become ready:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def specs() -> list[ModelSpec]:
    return load_specs(MODEL_REPOSITORY)


@pytest.fixture(scope="session")
def spec(specs: list[ModelSpec]) -> ModelSpec:
    return next(s for s in specs if s.name == "lesion_detector")


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(tmp_path_factory.mktemp("triton-session"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def client(triton: TritonServer) -> AsyncIterator[TritonClient]:
    async with TritonClient(triton.grpc_url, inference_timeout_s=30.0, readiness_timeout_s=30.0) as c:
        yield c


@pytest.fixture(scope="session")
def onnx_session(spec: ModelSpec) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(spec.model_path(MODEL_REPOSITORY)), options, providers=["CPUExecutionProvider"])


def random_images(n: int, seed: int, spec: ModelSpec) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *spec.input.shape)).astype(np.float32)
