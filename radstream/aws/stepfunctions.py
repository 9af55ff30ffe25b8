"""Step Functions: start an execution by name, and answer the task tokens of ``.waitForTaskToken`` states.

A task is answered with a typed error: its class name is the error name the state machine's Retry and
Catch match, its detail the cause. An answer or heartbeat for a task that is closed already (timed out,
answered before, execution stopped) raises :class:`~radstream.errors.TaskClosed` with the service's code.
"""

from __future__ import annotations

import json
from typing import Any

from radstream.aws.errors import error_code, translate
from radstream.errors import NotFound, RadStreamError, TaskClosed

# What Step Functions answers for a token whose task is closed (timed out, answered, execution stopped).
CLOSED_TASK_CODES = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})
MAX_CAUSE_CHARS = 32_000  # SendTaskFailure's limit on cause


class StepFunctions:
    def __init__(self, client: Any) -> None:
        self._sfn = client
        self._arns: dict[str, str] = {}

    async def state_machine_arn(self, name: str) -> str:
        """The ARN of the state machine ``name`` (looked up once per client); NotFound when there is none."""
        if name not in self._arns:
            try:
                async for page in self._sfn.get_paginator("list_state_machines").paginate():
                    for machine in page["stateMachines"]:
                        self._arns[machine["name"]] = machine["stateMachineArn"]
            except Exception as exc:
                raise translate(exc, "ListStateMachines") from exc
            if name not in self._arns:
                raise NotFound(f"state machine {name} not found")
        return self._arns[name]

    async def start_execution(self, state_machine: str, name: str, document: dict[str, Any]) -> str | None:
        """Start the execution ``name`` of ``state_machine`` with ``document`` as its input; its ARN, or None
        when an execution of that name exists already (the name makes a start idempotent)."""
        arn = await self.state_machine_arn(state_machine)
        try:
            response = await self._sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(document))
        except Exception as exc:
            if error_code(exc) == "ExecutionAlreadyExists":
                return None
            raise translate(exc, "StartExecution") from exc
        return str(response["executionArn"])

    async def execution_status(self, state_machine: str, name: str) -> str | None:
        """RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED: the status of the execution ``name``; None when
        there is none of that name."""
        arn = (await self.state_machine_arn(state_machine)).replace(":stateMachine:", ":execution:", 1) + f":{name}"
        try:
            response = await self._sfn.describe_execution(executionArn=arn)
        except Exception as exc:
            if error_code(exc) == "ExecutionDoesNotExist":
                return None
            raise translate(exc, "DescribeExecution") from exc
        return str(response["status"])

    async def heartbeat(self, token: str) -> None:
        await self._answer("SendTaskHeartbeat", self._sfn.send_task_heartbeat(taskToken=token))

    async def succeed(self, token: str, output: dict[str, Any]) -> None:
        await self._answer("SendTaskSuccess", self._sfn.send_task_success(taskToken=token, output=json.dumps(output)))

    async def fail(self, token: str, error: RadStreamError) -> None:
        """Fail the task with ``error``: its class name is the error name, its detail the cause."""
        call = self._sfn.send_task_failure(
            taskToken=token, error=type(error).__name__, cause=error.detail[:MAX_CAUSE_CHARS]
        )
        await self._answer("SendTaskFailure", call)

    async def _answer(self, what: str, call: Any) -> None:
        try:
            await call
        except Exception as exc:
            code = error_code(exc)
            if code in CLOSED_TASK_CODES:
                raise TaskClosed(code) from exc
            raise translate(exc, what) from exc
