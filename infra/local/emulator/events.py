"""EventBridge: matching rules deliver to Lambda targets, with the InputTransformer applied (gap 2 in the
package docstring)."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("radstream.emulator")

EVENT_DELIVERY_ATTEMPTS = 3


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
        if self.state != "ENABLED":  # moto 5.2 delivers to the targets of a disabled rule too; AWS does not
            return
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
