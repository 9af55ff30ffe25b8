"""Orthanc (Debian's orthanc + orthanc-dicomweb) in a network namespace with only ``lo``.

Orthanc 1.10 cannot bind to 127.0.0.1 alone, so it runs inside namespace ``NETNS`` and so does the
client that feeds it: all traffic stays on that namespace's loopback. Used by loadtest/bench_stow.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.local.processes import ProcessSpec, free_port
from infra.local.supervisor import Supervisor

NETNS = "rsbench"
ORTHANC_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"),
)


class OrthancUnavailable(RuntimeError):
    pass


def orthanc_config(work: Path, http_port: int, plugin: Path) -> dict[str, Any]:
    return {
        "Name": "rsbench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),  # SQLite index on disk: Orthanc's default
        "StorageCompression": False,
        "SyncStorageArea": True,  # Orthanc's default: fsync() every file it writes
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def _netns(*argv: str) -> None:
    subprocess.run(["ip", "netns", *argv], check=True, capture_output=True, timeout=30)


@contextmanager
def orthanc_process(work: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Orthanc in namespace ``NETNS``: (PID, HTTP port, notes); stopped by PID, namespace removed, on exit."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((p for p in ORTHANC_PLUGIN_CANDIDATES if p.exists()), None)
    if binary is None or plugin is None:
        raise OrthancUnavailable(
            "Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise OrthancUnavailable("creating a network namespace needs root and iproute2")
    port = 8042
    config = orthanc_config(work, port, plugin)
    (work / "orthanc.json").write_text(json.dumps(config, indent=2))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    try:
        _netns("add", NETNS)
    except subprocess.CalledProcessError as exc:
        raise OrthancUnavailable(f"ip netns add failed: {exc.stderr.decode().strip()}") from exc
    supervisor = Supervisor()
    try:
        _netns("exec", NETNS, "ip", "link", "set", "lo", "up")
        # `ip netns exec` execs the command in place, so the PID is Orthanc's own. Readiness is awaited by
        # the client, which runs inside the namespace.
        process = supervisor.start(
            ProcessSpec(
                name="orthanc",
                argv=["ip", "netns", "exec", NETNS, binary, str(work / "orthanc.json")],
                log_path=work / "orthanc.log",
            )
        )
        notes = {
            "version": " ".join([Path(version.split()[0]).name, *version.split()[1:]]) if version else "?",
            "plugin": str(plugin),
            "index": "SQLite index on disk; files on disk, uncompressed, fsync()ed "
            "(moto keeps objects under 1 MiB, every instance here, in RAM)",
            "config": {k: v for k, v in config.items() if k not in ("StorageDirectory", "IndexDirectory")},
        }
        yield process.pid, port, notes
    finally:
        supervisor.stop()
        _netns("delete", NETNS)


def run_client_in_namespace(module: str, args: list[str], work: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module --orthanc-client ARGS --out=...`` inside ``NETNS`` (Orthanc's loopback) and
    return the JSON it wrote; OrthancUnavailable with its stderr and Orthanc's log when it failed."""
    out = work / "client.json"
    argv = ["ip", "netns", "exec", NETNS, sys.executable, "-m", module, "--orthanc-client", *args, f"--out={out}"]
    done = subprocess.run(
        argv, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0 or not out.exists():
        log = work / "orthanc.log"
        log_tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise OrthancUnavailable(f"Orthanc client failed: {done.stderr[-1500:]}\nOrthanc log: {log_tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result
