"""The `radstream` command: `send` against a live gateway, `up` started and stopped as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from infra.local.provision import provision
from loadtest import synthetic
from radstream.settings import Settings
from tests.conftest import KEY_ALPHA, Gateway, free_port
from tests.gateway.stowhelp import stow

RADSTREAM = str(Path(sys.executable).parent / "radstream")


def test_send_uploads_folder_and_reports_non_dicom(gateway: Gateway, tmp_path: Path) -> None:
    uids = synthetic.StudyUids.new()
    for i in range(5):
        (tmp_path / f"slice{i}.dcm").write_bytes(synthetic.to_bytes(synthetic.ct_slice(uids, i, rows=64, cols=64)))
    (tmp_path / "notes.txt").write_text("not an image")
    result = subprocess.run(
        [RADSTREAM, "send", str(tmp_path), "--url", gateway.url, "--api-key", KEY_ALPHA, "--batch", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored" in result.stdout and "│     5 │" in result.stdout
    assert "notes.txt" in result.stdout
    status = httpx.get(f"{gateway.url}/v1/studies/{uids.study}", headers=gateway.auth()).json()
    assert status["instances"] == 5


def test_send_exits_nonzero_on_failures(gateway: Gateway, tmp_path: Path) -> None:
    uids = synthetic.StudyUids.new()
    ds = synthetic.ct_slice(uids, 0, rows=32, cols=32)
    assert stow(gateway.url, gateway.auth(), [synthetic.to_bytes(ds)]).status_code == 200
    ds.SeriesDescription = "edited after sending"
    (tmp_path / "edited.dcm").write_bytes(synthetic.to_bytes(ds))
    result = subprocess.run(
        [RADSTREAM, "send", str(tmp_path), "--url", gateway.url, "--api-key", KEY_ALPHA],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "0x0111" in result.stdout


async def test_provisioning_is_idempotent(settings: Settings) -> None:
    first = await provision(settings, with_pipeline=False)
    assert await provision(settings, with_pipeline=False) == first


def _up_env(state: Path, port: int, aws_port: int) -> dict[str, str]:
    """`radstream up` on free ports with its own state folder (no RADSTREAM_API_KEYS: it makes a key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSTREAM_")}
    return env | {
        "RADSTREAM_HTTP_PORT": str(port),
        "RADSTREAM_AWS_ENDPOINT_URL": f"http://127.0.0.1:{aws_port}",
        "RADSTREAM_LAMBDA_RUNTIME_PORT": str(free_port()),
        "RADSTREAM_TRITON_GRPC_URL": f"127.0.0.1:{free_port()}",
        "RADSTREAM_TRITON_HTTP_PORT": str(free_port()),
        "RADSTREAM_TRITON_METRICS_PORT": str(free_port()),
        "RADSTREAM_DIMSE_PORT": str(free_port()),
        "RADSTREAM_DIMSE_METRICS_PORT": str(free_port()),
        "RADSTREAM_STATE_DIR": str(state),
        "RADSTREAM_API_KEY_FILE": str(state / "api-key"),
    }


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_up_runs_the_stack_and_stops_every_child(tmp_path: Path, stop_signal: signal.Signals) -> None:
    """Started, used, refused a second time (same state folder; same ports), stopped by a signal (SIGHUP:
    the terminal closed or the SSH session lost) with every child."""
    port, aws_port = free_port(), free_port()
    env = _up_env(tmp_path, port, aws_port)
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen([RADSTREAM, "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "RadStream is up" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "stack did not come up in 120 s"
            time.sleep(0.5)
        key = (tmp_path / "api-key").read_text().strip()
        assert oct((tmp_path / "api-key").stat().st_mode & 0o777) == "0o600"
        assert key in (tmp_path / "up.log").read_text()
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/docs").status_code == 200
        uids, (ds,) = synthetic.StudyUids.new(), [None]
        ds = synthetic.ct_slice(uids, 0, rows=32, cols=32)
        assert stow(url, {"Authorization": f"Bearer {key}"}, [synthetic.to_bytes(ds)]).status_code == 200
        children = _children(proc.pid)
        assert len(children) >= 2  # emulator + gateway

        again = subprocess.run([RADSTREAM, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert f"already running with the state folder {tmp_path} (pid {proc.pid})" in again.stdout
        other_state = env | {"RADSTREAM_STATE_DIR": str(tmp_path / "other")}
        again = subprocess.run([RADSTREAM, "up"], env=other_state, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert "is in use by another program: is RadStream already running?" in again.stdout
        assert "Traceback" not in again.stdout + again.stderr
        assert _children(proc.pid) == children  # the running stack is untouched

        proc.send_signal(stop_signal)
        assert proc.wait(timeout=60) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RADSTREAM_HTTP_PORT", "abc", "invalid configuration: RADSTREAM_HTTP_PORT: Input should be a valid integer"),
        ("RADSTREAM_API_KEYS", "justakey", "RADSTREAM_API_KEYS entry 'justakey' is not of the form tenant:key"),
        ("RADSTREAM_TRITON_GRPC_URL", "127.0.0.1", "RADSTREAM_TRITON_GRPC_URL names no port"),
        ("RADSTREAM_STATE_DIR", "/proc/radstream", "the state folder /proc/radstream cannot be used"),
    ],
)
def test_up_refuses_a_configuration_it_cannot_run_in_one_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = _up_env(tmp_path, free_port(), free_port()) | {variable: value}
    result = subprocess.run([RADSTREAM, "up"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert message in result.stdout.replace("\n", " "), result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_up_stops_everything_when_its_parent_dies(tmp_path: Path) -> None:
    """`make up` killed: make does not pass signals on, so `radstream up` must notice on its own."""
    port, aws_port = free_port(), free_port()
    env = _up_env(tmp_path, port, aws_port)
    log = tmp_path / "up.log"
    parent = subprocess.Popen(
        ["sh", "-c", f'"{RADSTREAM}" up > "{log}" 2>&1 & echo $! > "{tmp_path}/pid"; wait'], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while "RadStream is up" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.5)
        up_pid = int((tmp_path / "pid").read_text())
        children = _children(up_pid)
        assert len(children) >= 4
        parent.kill()  # SIGKILL: the parent cannot pass anything on
        parent.wait()
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid in [up_pid, *children]):
            alive = [pid for pid in [up_pid, *children] if Path(f"/proc/{pid}").exists()]
            if all(
                "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in alive if Path(f"/proc/{pid}").exists()
            ):
                break
            assert time.monotonic() < deadline, f"still running: {alive}"
            time.sleep(0.5)
        assert "went away; stopping the stack" in log.read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
