"""The local stack's EventBridge Scheduler: invokes the reconcile function every ``reconcile_interval_s``,
through the emulator's Lambda API, as the schedule in the template does on AWS (worker/stages/reconcile.py).

Run by ``radstream up`` as its own process: ``python -m infra.local.scheduler``. SIGTERM ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal

from botocore.config import Config

from infra.resources import ResourceNames
from radstream.aws import config as aws
from radstream.settings import Settings, get_settings

log = logging.getLogger("radstream.scheduler")
ANSWER_KEYS = ("started", "restarted", "closed", "stuck")


async def tick(lam: object, function: str) -> None:
    try:
        response = await lam.invoke(FunctionName=function, Payload=b"{}")  # type: ignore[attr-defined]
        answer = json.loads(await response["Payload"].read() or b"null")
    except Exception as exc:  # the next tick tries again
        log.warning("reconcile not invoked: %s", type(exc).__name__)
        return
    if response.get("FunctionError"):
        log.error("reconcile failed: %s", answer.get("errorType") if isinstance(answer, dict) else answer)
    elif isinstance(answer, dict) and any(answer.get(k) for k in ANSWER_KEYS):
        log.info("reconciled: %s", {k: answer.get(k) for k in ANSWER_KEYS})


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kwargs = aws.client_kwargs(settings)
    kwargs["config"] = kwargs["config"].merge(Config(read_timeout=900, retries={"total_max_attempts": 1}))
    function = ResourceNames.from_settings(settings).function_name("reconcile")
    log.info("reconciling every %.0f s", settings.reconcile_interval_s)
    async with aws.session(settings).client("lambda", **kwargs) as lam:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.reconcile_interval_s)
                break
            await tick(lam, function)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(get_settings()))


if __name__ == "__main__":
    main()
