"""The AWS emulator of the local stack: moto's server plus the few things moto 5.2 does not do.

Run as ``python -m infra.local.moto_gaps --host H --port P``. Everything that differs from AWS lives here,
and only here:

1. Lambda: moto runs handler code only in Docker. Here ``Invoke`` sends the function's ``Handler``
   (``worker.stages.main.validate_metadata``) and the event to the local Lambda runtime process
   (infra/local/lambda_runtime.py); an exception comes back as a ``FunctionError`` payload with
   ``errorType`` = the exception's class name, as the Lambda runtime does, so Step Functions'
   Retry/Catch match our typed errors exactly as on AWS.
2. EventBridge: moto does not deliver to Lambda targets, and applies no input transformer to S3 events.
   Here matching rules deliver to Lambda targets asynchronously with the InputTransformer applied,
   retry twice, then send the event to the target's dead-letter queue.
3. Kinesis and Firehose: moto's shards lose records under concurrent PutRecords (sequence numbers are
   not assigned atomically); here a shard's writes and reads are serialized. moto writes nothing for a
   Kinesis-sourced delivery stream; here a pump reads the source stream and writes objects with the
   stream's S3 prefix (``!{timestamp:...}`` expanded), buffering for ``PUMP_INTERVAL_S`` instead of AWS's
   60 s minimum.
4. Step Functions execution is switched on (``execute_state_machine``), and ``SendTaskFailure`` keeps its
   ``cause`` (moto's response handler drops it, so a failed study would lose its reason).
5. Step Functions speed, same results for our state machine: moto parses the ASL definition with ANTLR
   for every execution, builds a new boto3 client (and a JSONPath parser) for every task, and sends each
   Lambda task through an HTTP request to itself. Here the parsed program is reused per definition (its
   components keep per-execution state in the execution's environment, not in themselves), clients and
   JSONPath expressions are cached, and ``lambda:invoke`` tasks call the Lambda backend directly (the
   task sees the same payload, FunctionError and error names; ``LogType`` is not honoured, as moto keeps
   no logs). Service integrations (``sqs:sendMessage.waitForTaskToken``) and the Firehose pump use boto3
   clients that reach the backends in this process, as moto's decorator mode does, not through HTTP.
6. HTTP speed, same answers: moto's server closes every connection (werkzeug's development server), lists
   its package directory and inspects its response classes for every request. Here connections are kept
   alive (with TCP_NODELAY), and those lookups are done once. Invocations of the local Lambda runtime reuse
   connections too. With 5, this took the emulator's CPU per single-image study from about 150 ms to about
   50 ms.

What only real AWS can show: Lambda cold starts, memory limits and IAM enforcement; EventBridge's
delivery latency; Firehose's real buffering; Athena (``radstream stats`` runs the same SQL on DuckDB).
"""

from __future__ import annotations

import argparse
import copy
import http.client
import io
import json
import logging
import os
import select
import signal
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import moto

log = logging.getLogger("radstream.emulator")

MOTO_VERSION = "5.2.5"  # the gaps above were checked against this version
PUMP_INTERVAL_S = 1.0
EVENT_DELIVERY_ATTEMPTS = 3


def _check_version() -> None:
    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"infra/local/moto_gaps.py targets moto {MOTO_VERSION}, found {moto.__version__}")


# --------------------------------------------------------------------------------------------- Lambda
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


# ------------------------------------------------------------------------------------------ EventBridge
def _transform(target: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    from moto.events.utils import EventTemplateParser

    transformer = target.get("InputTransformer")
    if transformer:
        event = {"ingestion-time": datetime.now(UTC).isoformat(), **event}
        result: dict[str, Any] = EventTemplateParser.parse(
            input_template=transformer.get("InputTemplate"),
            input_paths_map=transformer.get("InputPathsMap", {}),
            event=event,  # type: ignore[arg-type]
        )
        return result
    if "Input" in target:
        constant: dict[str, Any] = json.loads(target["Input"])
        return constant
    return event


def _deliver_to_lambda(rule: Any, target: dict[str, Any], event: dict[str, Any]) -> None:
    from moto.awslambda.models import lambda_backends
    from moto.sqs.models import sqs_backends
    from moto.utilities.arns import parse_arn

    arn = parse_arn(target["Arn"])
    body = json.dumps(event)
    for attempt in range(EVENT_DELIVERY_ATTEMPTS):
        response_headers: dict[str, str] = {}
        try:
            lambda_backends[arn.account][arn.region].invoke(
                target["Arn"], None, body, {"x-amz-invocation-type": "Event"}, response_headers
            )
            if "x-amz-function-error" not in response_headers:
                return
        except Exception as exc:
            log.warning("event delivery to %s failed: %s", target["Arn"], exc)
        time.sleep(0.2 * 2**attempt)
    dlq = target.get("DeadLetterConfig", {}).get("Arn")
    if dlq:
        queue = parse_arn(dlq)
        sqs_backends[queue.account][queue.region].send_message(queue.resource_id, body)
        log.error("event for rule %s sent to dead-letter queue %s", rule.name, queue.resource_id)


def _patch_events() -> None:
    from moto.events.models import Rule
    from moto.utilities.arns import parse_arn

    original = Rule.send_to_targets

    def send_to_targets(self: Any, original_event: dict[str, Any], transform_input: bool = True) -> None:
        if not self.event_pattern.matches_event(original_event):
            return
        lambdas = [t for t in self.targets if parse_arn(t["Arn"]).service == "lambda"]
        for target in lambdas:
            try:
                event = _transform(target, original_event)
            except Exception as exc:
                log.error("input transformer of rule %s failed: %s", self.name, exc)
                continue
            threading.Thread(target=_deliver_to_lambda, args=(self, target, event), daemon=True).start()
        others = [t for t in self.targets if t not in lambdas]
        if others:
            rest = copy.copy(self)
            rest.targets = others
            original(rest, original_event, transform_input)  # type: ignore[arg-type]

    Rule.send_to_targets = send_to_targets  # type: ignore[method-assign,assignment]


# --------------------------------------------------------------------------------------------- Firehose
def _expand_prefix(prefix: str, now: datetime) -> str:
    for token, fmt in (("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H")):
        prefix = prefix.replace(f"!{{timestamp:{token}}}", now.strftime(fmt))
    return prefix


class FirehosePump:
    """Delivers Kinesis-sourced Firehose streams to S3, as the real service would."""

    def __init__(self, region: str) -> None:
        self.firehose = in_process_client("firehose", region)
        self.kinesis = in_process_client("kinesis", region)
        self.s3 = in_process_client("s3", region)
        self._iterators: dict[tuple[str, str], str] = {}
        self._sequence = 0

    def pump_once(self) -> int:
        written = 0
        for name in self.firehose.list_delivery_streams(DeliveryStreamType="KinesisStreamAsSource")[
            "DeliveryStreamNames"
        ]:
            desc = self.firehose.describe_delivery_stream(DeliveryStreamName=name)["DeliveryStreamDescription"]
            source = desc["Source"]["KinesisStreamSourceDescription"]["KinesisStreamARN"]
            dest = desc["Destinations"][0].get("ExtendedS3DestinationDescription") or desc["Destinations"][0].get(
                "S3DestinationDescription"
            )
            records = self._read(source.split("/")[-1])
            if records:
                now = datetime.now(UTC)
                self._sequence += 1
                key = (
                    f"{_expand_prefix(dest.get('Prefix', ''), now)}{name}-{now:%Y-%m-%d-%H-%M-%S}-{self._sequence:08d}"
                )
                self.s3.put_object(Bucket=dest["BucketARN"].split(":::")[-1], Key=key, Body=b"".join(records))
                written += len(records)
        return written

    def _read(self, stream: str) -> list[bytes]:
        records: list[bytes] = []
        for shard in self.kinesis.list_shards(StreamName=stream)["Shards"]:
            handle = (stream, shard["ShardId"])
            iterator = (
                self._iterators.get(handle)
                or self.kinesis.get_shard_iterator(
                    StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            )
            while True:
                page = self.kinesis.get_records(ShardIterator=iterator, Limit=1000)
                records.extend(r["Data"] for r in page["Records"])
                iterator = page["NextShardIterator"]
                if not page["Records"]:
                    break
            self._iterators[handle] = iterator
        return records


# ---------------------------------------------------------------------------------------------- Kinesis
_KINESIS_LOCK = threading.RLock()


def _patch_kinesis_concurrency() -> None:
    """moto's Kinesis shard numbers a record as "the highest so far + 1" ("not safe for concurrency", its
    source says): two PutRecords handled at once on the server's threads get the same number and one record
    replaces the other. Here a shard's writes and reads hold one lock."""
    from moto.kinesis.models import Shard

    for name in ("put_record", "get_records"):
        original = getattr(Shard, name)

        def locked(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _KINESIS_LOCK:
                return _original(self, *args, **kwargs)

        setattr(Shard, name, locked)


# ------------------------------------------------------------------------------------------ Step Functions
def _patch_send_task_failure() -> None:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    def send_task_failure(self: Any) -> Any:
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign]


def _cached_program(self: Any) -> Any:
    """``ExecutionWorker._get_evaluation_entrypoint``: the parsed program, once per definition."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    definition: str = self._evaluation_details.state_machine_details.definition
    with _PROGRAMS_LOCK:
        program = _PROGRAMS.get(definition)
    if program is None:
        program = AmazonStateLanguageParser.parse(definition)[0]
        with _PROGRAMS_LOCK:
            if len(_PROGRAMS) >= _PROGRAMS_MAX:
                _PROGRAMS.clear()
            _PROGRAMS[definition] = program
    return program


_PROGRAMS: dict[str, Any] = {}
_PROGRAMS_MAX = 64
_PROGRAMS_LOCK = threading.Lock()
_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def in_process_client(service: str, region: str) -> Any:
    """A boto3 client whose requests go straight to this process's moto backends, as in moto's decorator
    mode: the same request and response serialisation, but no socket, HTTP server or thread per request."""
    from botocore.config import Config
    from moto.core.botocore_stubber import BotocoreStubber

    stubber = BotocoreStubber()
    stubber.enabled = True
    with _CLIENTS_LOCK:  # creating clients on one boto3 session is not thread-safe; using them is
        client = boto3.client(
            service,
            region_name=region,
            aws_access_key_id="radstream",
            aws_secret_access_key="radstream",  # noqa: S106 - the emulator accepts any key
            config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
        )
    client.meta.events.register("before-send", stubber)
    return client


def _cached_client_factory() -> Any:
    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        # Every task passes credentials (at least the execution's role); moto 5.2.5 ignores them and does
        # not assume roles, so neither does this.
        client = _CLIENTS.get((region, service))
        if client is None:
            client = _CLIENTS.setdefault((region, service), in_process_client(service, region))
        return client

    return boto_client_for


def _invoke_lambda_direct(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
    """``lambda:invoke`` task -> the Lambda backend, without an HTTP request from the emulator to itself."""
    from botocore.exceptions import ClientError
    from moto.awslambda.models import lambda_backends
    from moto.core.exceptions import JsonRESTError
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.lambda_eval_utils import _from_payload
    from moto.utilities.arns import parse_arn

    name = str(parameters["FunctionName"])
    account = parse_arn(name).account if name.startswith("arn:") else DEFAULT_ACCOUNT_ID
    invocation_type = parameters.get("InvocationType", "RequestResponse")
    response_headers: dict[str, str] = {}
    try:
        payload = lambda_backends[account][region].invoke(
            name,
            parameters.get("Qualifier"),
            parameters.get("Payload"),
            {"x-amz-invocation-type": invocation_type},
            response_headers,
        )
    except JsonRESTError as exc:  # what the HTTP path turns into a ClientError (e.g. ResourceNotFoundException)
        error = {
            "Error": {"Code": exc.error_type, "Message": exc.message},
            "ResponseMetadata": {"HTTPStatusCode": exc.code, "RequestId": str(uuid.uuid4())},
        }
        raise ClientError(error, "Invoke") from exc  # type: ignore[arg-type]
    raw = payload.encode() if isinstance(payload, str) else payload or b""
    response: dict[str, Any] = {"StatusCode": 200, "Payload": _from_payload(io.BytesIO(raw))}
    if "x-amz-function-error" in response_headers:
        response["FunctionError"] = response_headers["x-amz-function-error"]
    return response


def _patch_stepfunctions_speed() -> None:
    import functools

    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sqs
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    ExecutionWorker._get_evaluation_entrypoint = _cached_program  # type: ignore[method-assign]
    cached = _cached_client_factory()
    for module in (boto_client, lambda_eval_utils, state_task_service_sqs):
        module.boto_client_for = cached  # type: ignore[attr-defined]
    lambda_eval_utils._invoke_lambda_function = _invoke_lambda_direct
    json_path.parse = functools.lru_cache(maxsize=1024)(json_path.parse)  # type: ignore[attr-defined]
    result_path.parse = functools.lru_cache(maxsize=1024)(result_path.parse)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ HTTP layer
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


# ------------------------------------------------------------------------------------------------- main
def install() -> None:
    _check_version()
    from moto.awslambda.models import LambdaFunction

    LambdaFunction._invoke_lambda = _invoke_remote  # type: ignore[method-assign]
    from moto.core.config import default_user_config

    default_user_config["stepfunctions"] = {"execute_state_machine": True}
    _patch_events()
    _patch_send_task_failure()
    _patch_stepfunctions_speed()
    _patch_dispatch_speed()
    _patch_kinesis_concurrency()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    install()
    server = EmulatorServer(args.host, args.port)
    server.start()
    endpoint = f"http://{args.host}:{args.port}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pump = FirehosePump(args.region)
    log.info("AWS emulator (moto %s + local gaps) on %s", moto.__version__, endpoint)
    while not stop.wait(PUMP_INTERVAL_S):
        try:
            pump.pump_once()
        except Exception as exc:
            log.warning("firehose pump: %s", exc)
    server.stop()
    _RUNTIME.close()


if __name__ == "__main__":
    main()
