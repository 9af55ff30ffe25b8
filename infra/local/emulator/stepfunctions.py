"""Step Functions: ``SendTaskFailure`` keeps its cause; parsed programs, clients and JSONPath expressions are
cached, and ``lambda:invoke`` tasks call the Lambda backend directly (gaps 4 and 5 in the package
docstring)."""

from __future__ import annotations

import io
import threading
import uuid
from typing import Any

from infra.local.emulator.clients import in_process_client


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
