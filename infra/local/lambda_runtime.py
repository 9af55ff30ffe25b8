"""The local Lambda runtime: runs handler code for the emulator, in a process of its own.

moto runs Lambda code only in Docker. ``infra/local/emulator/`` forwards each ``Invoke`` here:
``POST /invoke {"handler": "worker.stages.main.validate_metadata", "event": {...}}``. The answer is
``{"result": ...}`` or ``{"error": {"errorType", "errorMessage", "stackTrace"}}``, the payload the real
Lambda runtime returns for an exception, so Step Functions' Retry/Catch see our typed error names.
A process of its own, like Lambda's own compute: handler CPU work does not compete with the emulator's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra.local.emulator.process import http_ok
from infra.local.processes import SINGLE_THREADED_MATH, ProcessSpec
from radstream.settings import Settings, settings_env

log = logging.getLogger("radstream.lambda")
_HANDLERS: dict[str, Callable[[dict[str, Any], object], Any]] = {}
ALLOWED_PREFIX = "worker.stages.main."  # only our own handlers can be named


def invoke(handler_path: str, event: dict[str, Any]) -> dict[str, Any]:
    if not handler_path.startswith(ALLOWED_PREFIX):
        return {"error": {"errorType": "HandlerNotAllowed", "errorMessage": handler_path, "stackTrace": []}}
    try:
        if handler_path not in _HANDLERS:
            module, _, name = handler_path.rpartition(".")
            _HANDLERS[handler_path] = getattr(importlib.import_module(module), name)
        result = _HANDLERS[handler_path](event, None)
    except Exception as exc:
        log.warning("%s raised %s: %s", handler_path, type(exc).__name__, str(exc)[:300])
        return {
            "error": {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc)[:1000],
                "stackTrace": traceback.format_tb(exc.__traceback__)[-5:],
            }
        }
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:  # what Lambda answers for a result it cannot serialise
        message = f"Unable to marshal response: {exc}"
        return {"error": {"errorType": "Runtime.MarshalError", "errorMessage": message[:1000], "stackTrace": []}}
    return {"result": result}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    timeout = 120  # an idle connection's thread ends after this many seconds
    disable_nagle_algorithm = True  # headers and body are separate writes on a connection that stays open

    def do_GET(self) -> None:
        self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        try:
            request = json.loads(self.rfile.read(length))
            answer = invoke(str(request["handler"]), request.get("event") or {})
        except (ValueError, KeyError) as exc:
            self._reply(400, {"error": {"errorType": "BadRequest", "errorMessage": str(exc), "stackTrace": []}})
            return
        self._reply(200, answer)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default backlog of 5 resets connections in bursts


def lambda_runtime_process_spec(settings: Settings) -> ProcessSpec:
    """Runs Lambda handler code for the emulator (this module, as a process of its own)."""
    port = settings.lambda_runtime_port
    return ProcessSpec(
        name="lambda-runtime",
        argv=[sys.executable, "-m", "infra.local.lambda_runtime", "--port", str(port)],
        env={**os.environ, **settings_env(settings), **SINGLE_THREADED_MATH},
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health"),
        ready_timeout_s=30.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = _Server((args.host, args.port), _Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("local Lambda runtime on http://%s:%d", args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
