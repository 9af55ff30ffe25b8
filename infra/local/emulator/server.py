"""The HTTP layer: moto's server application with kept-alive connections, and its per-request lookups done
once (gap 6 in the package docstring)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from typing import Any


def _patch_dispatch_speed() -> None:
    """Per-request work in moto's dispatch that gives the same answer every time, done once.

    ``list_of_moto_modules`` lists moto's package directory (one ``isdir`` per service) for every request;
    ``method_names_from_class`` runs ``inspect.getmembers`` on the response class for every request;
    EventBridge input transformers build a new JSONPath parser (PLY tables) for every event.
    """
    import functools

    import jsonpath_ng.ext
    from moto import backends
    from moto.core import responses, utils

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    names = functools.cache(lambda clazz: frozenset(utils.method_names_from_class(clazz)))
    responses.method_names_from_class = names  # type: ignore[attr-defined,assignment]
    jsonpath_ng.ext.parse = functools.lru_cache(maxsize=256)(jsonpath_ng.ext.parse)  # type: ignore[attr-defined]


class _Body:
    """``wsgi.input`` bounded by Content-Length, so what the application left unread can be drained and the
    connection reused."""

    def __init__(self, stream: Any, length: int) -> None:
        self.stream = stream
        self.remaining = length

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self.stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self.stream.readline, size)

    def _take(self, reader: Any, size: int | None) -> bytes:
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data: bytes = reader(size) if size else b""
        self.remaining -= len(data)
        return data


_EXHAUSTED = io.BytesIO(b"")


def _keep_alive_handler() -> type:
    """moto's request handler with HTTP/1.1 keep-alive.

    Werkzeug's development server answers every request with ``Connection: close`` because Python's
    http.server cannot drain a request body the application did not read. This handler bounds the body by
    its Content-Length, drains what is left after the application returned (at most ``DRAIN_LIMIT``), and
    then keeps the connection. It still closes after chunked request bodies, HTTP/1.0, ``Connection:
    close``, a request rejected before the application ran (its error page says ``Connection: close``), and
    an application that raised (part of a response may be out). Every request of every client used to pay
    a TCP connect, an accept and a new server thread.
    """
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class KeepAliveHandler(MotoRequestHandler):
        timeout = KEEP_ALIVE_IDLE_S  # an idle connection's thread ends after this
        _body: _Body | None = None
        _keep = False

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; with Nagle's algorithm the second waits for the
            # client's delayed ACK (40 ms) on a connection that stays open.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def make_environ(self) -> dict[str, Any]:
            environ = super().make_environ()
            self._body = None
            self._keep = False
            if self.request_version != "HTTP/1.1" or self.headers.get("Connection", "").lower() == "close":
                return environ
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return environ
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return environ
            if length < 0:
                return environ
            self._body = _Body(self.rfile, length)
            environ["wsgi.input"] = self._body
            self._keep = True
            # After the response werkzeug reads whatever the socket still holds (it assumes the connection
            # closes): with keep-alive that is the client's next request. Until run_wsgi returns, that read
            # sees an exhausted stream; the body is read through ``_body``, which holds the real one.
            self.rfile = _EXHAUSTED
            return environ

        def log_error(self, format: str, *args: Any) -> None:
            if format.startswith("Request timed out"):  # an idle kept-alive connection ending: not an error
                return
            super().log_error(format, *args)

        def send_header(self, keyword: str, value: str) -> None:
            if self._keep and keyword.lower() == "connection" and value.lower() == "close":
                return
            super().send_header(keyword, value)

        def run_wsgi(self) -> None:
            try:
                super().run_wsgi()
            finally:
                if self._body is not None:
                    self.rfile = self._body.stream
                keep, self._keep = self._keep, False  # error pages of the next request must say close
            body = self._body
            if not keep or body is None or self.environ.get(_APP_FAILED) or body.remaining > DRAIN_LIMIT:
                self.close_connection = True
                return
            while body.remaining:
                if not body.read(min(body.remaining, 1 << 16)):
                    self.close_connection = True
                    return

    return KeepAliveHandler


KEEP_ALIVE_IDLE_S = 120.0
DRAIN_LIMIT = 16 << 20
_APP_FAILED = "radstream.app_failed"


def _flag_failures(app: Any) -> Any:
    """The WSGI application, marking in the environ a request whose application raised (werkzeug closes
    such a connection only for chunked responses)."""

    def flagged(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        iterable = None
        try:
            iterable = app(environ, start_response)
            yield from iterable
        except BaseException:  # GeneratorExit too: werkzeug stopped before the end of the response
            environ[_APP_FAILED] = True
            raise
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    return flagged


class EmulatorServer:
    """moto's server application (the same ``DomainDispatcherApplication`` as ``moto_server``), threaded,
    with keep-alive connections. ``app`` replaces moto's application (tests)."""

    def __init__(self, host: str, port: int, app: Any = None) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = _flag_failures(app or DomainDispatcherApplication(create_backend_app))
        self._server = make_server(host, port, app, threaded=True, request_handler=_keep_alive_handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="emulator-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
