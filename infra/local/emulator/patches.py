"""Installs every gap of the package docstring into moto, after checking moto's version."""

from __future__ import annotations

import moto

from infra.local.emulator.events import _patch_events
from infra.local.emulator.kinesis import _patch_kinesis_concurrency
from infra.local.emulator.lambda_invoke import _invoke_remote
from infra.local.emulator.server import _patch_dispatch_speed
from infra.local.emulator.stepfunctions import _patch_send_task_failure, _patch_stepfunctions_speed

MOTO_VERSION = "5.2.5"  # the gaps in the package docstring were checked against this version


def _check_version() -> None:
    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"infra/local/emulator targets moto {MOTO_VERSION}, found {moto.__version__}")


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
