"""Lambda: ``Invoke`` runs the function's handler in the local Lambda runtime process, over kept-alive
connections (gap 1 in the package docstring)."""

from __future__ import annotations

import http.client
import json
import os
import select
import threading
import time
import urllib.parse
from typing import Any


class _RuntimeConnections:
    """Keep-alive connections to the local Lambda runtime, shared by the threads that invoke functions (Step
    Functions evaluates every task on a thread of its own, so per-thread connections would never be reused).

    A pooled connection is reused only if it was idle less than ``MAX_IDLE_S`` (the runtime closes idle ones
    after 120 s) and the runtime has not closed it (nothing readable on it). A request is sent again, on a
    new connection, only when sending it failed, so a runtime never runs one invocation twice.
    """

    MAX_IDLE = 16
    MAX_IDLE_S = 60.0

    def __init__(self) -> None:
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.close()

    @staticmethod
    def _open(conn: http.client.HTTPConnection) -> bool:
        """False if the peer closed the connection (an idle HTTP connection has nothing to read)."""
        if conn.sock is None:
            return False
        readable, _, _ = select.select([conn.sock], [], [], 0)
        return not readable

    def _pooled(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn, since = self._idle.pop()
            if time.monotonic() - since < self.MAX_IDLE_S and self._open(conn):
                return conn
            conn.close()

    def post(self, url: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(url)
        conn = self._pooled()
        reused = conn is not None
        while True:
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
            elif conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("POST", parts.path or "/", body, {"Content-Type": "application/json"})
            except (ConnectionResetError, BrokenPipeError):
                conn.close()
                if reused:  # closed by the runtime between the check and the send: it got nothing
                    conn, reused = None, False
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            try:
                response = conn.getresponse()
                data = response.read()
            except BaseException:  # the runtime may have run it: never sent twice from here
                conn.close()
                raise
            with self._lock:
                if len(self._idle) < self.MAX_IDLE and not response.will_close:
                    self._idle.append((conn, time.monotonic()))
                else:
                    conn.close()
            return response.status, data


_RUNTIME = _RuntimeConnections()


def _invoke_remote(self: Any, event: Any = None) -> tuple[str, bool, str]:
    """Run the function's handler in the local Lambda runtime process (infra/local/lambda_runtime.py).

    A runtime that cannot be reached is a Lambda service error (``ServiceException``, HTTP 500), as on AWS:
    Step Functions sees ``Lambda.ServiceException`` and retries, instead of a function error. A handler
    running past the function's timeout is a function error, ``Sandbox.Timedout``, as on AWS."""
    from moto.core.exceptions import JsonRESTError

    if isinstance(event, (str, bytes)):
        event = json.loads(event or "{}")
    body = json.dumps({"handler": self.handler, "event": event if event is not None else {}}).encode()
    url = f"{os.environ['RADSTREAM_LAMBDA_RUNTIME_URL']}/invoke"
    timeout = float(self.timeout or 300)
    try:
        status, data = _RUNTIME.post(url, body, timeout=timeout)
        answer = json.loads(data)
        if status != 200 and "error" not in answer:
            raise ValueError(f"HTTP {status}")
    except TimeoutError:  # the function's timeout: a function error, as Lambda reports it (not retried)
        payload = {"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout:.2f} seconds"}
        return json.dumps(payload), True, ""
    except (OSError, ValueError, http.client.HTTPException) as exc:
        error = JsonRESTError("ServiceException", f"local Lambda runtime unreachable: {exc}")
        error.code = 500
        raise error from exc
    if "error" in answer:
        return json.dumps(answer["error"]), True, "\n".join(answer["error"].get("stackTrace", []))
    return json.dumps(answer["result"]), False, ""
