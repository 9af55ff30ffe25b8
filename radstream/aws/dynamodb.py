"""The status table in DynamoDB: one item per (tenant, study), written by the gateway and the pipeline."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any

from radstream.aws.errors import error_code, translate
from radstream.keys import new_request_id
from radstream.status import ExportState, ExportStatus, ReceivedWrite, Run, RunRow, StudyState, StudyStatus, utcnow

OPEN_INDEX = "open-studies"  # sparse: only rows of studies with work not yet ended (received or in a run)
OPEN_SHARD = "open"  # the index's one partition key value
_RUN_FIELDS = "run_id, run_requested, run_started_at, run_full"


def new_run_id() -> str:
    return new_request_id()  # the same form as a request's id: time, then random


class StatusStore:
    """Typed access to the status table (partition key ``pk`` = tenant, sort key ``sk`` = study UID)."""

    def __init__(self, client: Any, table: str) -> None:
        self._ddb = client
        self.table = table

    async def record_received(self, tenant: str, study: str, token: str | None = None) -> ReceivedWrite:
        """Mark the study ``received``. Instance and series counts come from the study's manifests.

        ``token`` names the writer (the STOW request's id; random when not given), so that the write can
        be undone only while it is still the latest.
        """
        now, token = utcnow().isoformat(), token or uuid.uuid4().hex
        try:
            response = await self._ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": tenant}, "sk": {"S": study}},
                UpdateExpression=(
                    "SET #s = :received, created_at = if_not_exists(created_at, :now), updated_at = :now, "
                    "stage_times_ms = if_not_exists(stage_times_ms, :empty), received_by = :token, "
                    "open_shard = :open, open_since = if_not_exists(open_since, :now) ADD requested :one"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":received": {"S": StudyState.RECEIVED.value},
                    ":now": {"S": now},
                    ":empty": {"M": {}},
                    ":token": {"S": token},
                    ":open": {"S": OPEN_SHARD},
                    ":one": {"N": "1"},
                },
                ReturnValues="ALL_OLD",
            )
        except Exception as exc:
            raise translate(exc, "UpdateItem") from exc
        return ReceivedWrite(previous=response.get("Attributes"), updated_at=now, token=token)

    async def undo_received(self, tenant: str, study: str, write: ReceivedWrite) -> bool:
        """Put the row back as it was before ``write`` (remove it if there was none), unless something
        changed it since. True when undone."""
        condition = {  # this write is still the latest: its token, and no stage has updated the row since
            "ConditionExpression": "received_by = :token AND updated_at = :ours",
            "ExpressionAttributeValues": {":token": {"S": write.token}, ":ours": {"S": write.updated_at}},
        }
        if write.previous is None:
            key = {"pk": {"S": tenant}, "sk": {"S": study}}
            return await self._conditional(
                "DeleteItem", self._ddb.delete_item(TableName=self.table, Key=key, **condition)
            )
        return await self._conditional(
            "PutItem", self._ddb.put_item(TableName=self.table, Item=write.previous, **condition)
        )

    # Runs. A study's row counts the requests for a run (``requested``: every request that recorded
    # instances, every trigger, reprocess and retry) and holds the run in flight (``run_id``) with the count
    # it covers (``run_requested``). A run ends only if nothing was requested since it began; otherwise it
    # hands over to one follow-up run, which covers everything requested meanwhile.

    async def request_run(self, tenant: str, study: str, *, full: bool = False) -> None:
        """Ask for a run of the study (``full``: infer every instance again). Claim it with :meth:`claim_run`."""
        now = utcnow().isoformat()
        sets = [
            "updated_at = :now",
            "created_at = if_not_exists(created_at, :now)",
            "stage_times_ms = if_not_exists(stage_times_ms, :empty)",
            "#s = if_not_exists(#s, :received)",
            "open_shard = :open",
            "open_since = if_not_exists(open_since, :now)",
        ]
        values: dict[str, Any] = {
            ":now": {"S": now},
            ":empty": {"M": {}},
            ":received": {"S": StudyState.RECEIVED.value},
            ":open": {"S": OPEN_SHARD},
            ":one": {"N": "1"},
        }
        if full:
            sets.append("full_pending = :true")
            values[":true"] = {"BOOL": True}
        await self._update(
            "UpdateItem",
            Key=self._key(tenant, study),
            UpdateExpression="SET " + ", ".join(sets) + " ADD requested :one",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=values,
        )

    async def claim_run(self, tenant: str, study: str) -> Run | None:
        """Begin a run of the study, covering every request so far; None when one is in flight already (it
        hands over to a follow-up when it ends, so nothing requested is left out)."""
        return await self._begin_run(tenant, study, "attribute_exists(pk) AND attribute_not_exists(run_id)", {})

    async def hand_over(self, tenant: str, study: str, run_id: str) -> Run | None:
        """Replace the run ``run_id``, which could not end because more was requested while it ran, with a
        follow-up run; None when ``run_id`` is not the study's run in flight."""
        return await self._begin_run(tenant, study, "run_id = :ours", {":ours": {"S": run_id}}, previous=run_id)

    async def _begin_run(
        self, tenant: str, study: str, condition: str, values: dict[str, Any], previous: str | None = None
    ) -> Run | None:
        run_id, now = new_run_id(), utcnow().isoformat()
        sets = [
            "#s = :processing",
            "run_id = :run",
            "run_requested = if_not_exists(requested, :zero)",
            "run_started_at = :now",
            "updated_at = :now",
            "open_shard = :open",
            "open_since = if_not_exists(open_since, :now)",
        ]
        values = {
            **values,
            ":run": {"S": run_id},
            ":zero": {"N": "0"},
            ":now": {"S": now},
            ":one": {"N": "1"},
            ":open": {"S": OPEN_SHARD},
            ":processing": {"S": StudyState.PROCESSING.value},
        }
        if previous is not None:
            sets.append("previous_run = :ours")
        try:
            response = await self._ddb.update_item(
                TableName=self.table,
                Key=self._key(tenant, study),
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE full_pending, run_full ADD runs :one",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise translate(exc, "UpdateItem") from exc
        old = response.get("Attributes", {})
        full = bool(old.get("full_pending", {}).get("BOOL", False))
        run = Run(tenant, study, run_id, int(old.get("runs", {}).get("N", "0")) + 1, full)
        if full:  # kept with the run, so that a restarted execution is full too
            await self._update(
                "UpdateItem",
                Key=self._key(tenant, study),
                UpdateExpression="SET run_full = :true",
                ConditionExpression="run_id = :run",
                ExpressionAttributeValues={":true": {"BOOL": True}, ":run": {"S": run_id}},
            )
        return run

    async def finish_run(
        self,
        run: Run,
        state: StudyState,
        *,
        stage: str | None = None,
        stage_ms: float | None = None,
        result_location: str | None = None,
        failure_reason: str | None = None,
    ) -> bool:
        """End the run with the study ``state`` (completed or failed), if nothing was requested since it
        began; False otherwise (then :meth:`hand_over`) or when it is not the run in flight."""
        values: dict[str, Any] = {
            ":state": {"S": state.value},
            ":now": {"S": utcnow().isoformat()},
            ":run": {"S": run.run_id},
        }
        sets = ["#s = :state", "updated_at = :now", "last_run = :run"]
        removes = [_RUN_FIELDS, "open_shard", "open_since"]
        names = {"#s": "status"}
        if result_location is not None:
            values[":result"] = {"S": result_location}
            sets.append("result_location = :result")
        if failure_reason is not None:
            values[":reason"] = {"S": failure_reason}
            sets.append("failure_reason = :reason")
        else:
            removes.append("failure_reason")
        if stage is not None and stage_ms is not None:
            names["#stage"] = stage
            values[":ms"] = {"N": f"{stage_ms:.3f}"}
            sets.append("stage_times_ms.#stage = :ms")
        try:
            await self._ddb.update_item(
                TableName=self.table,
                Key=self._key(run.tenant, run.study),
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
                ConditionExpression="run_id = :run AND requested = run_requested",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise translate(exc, "UpdateItem") from exc
        return True

    async def run_row(self, tenant: str, study: str) -> RunRow | None:
        try:
            response = await self._ddb.get_item(TableName=self.table, Key=self._key(tenant, study), ConsistentRead=True)
        except Exception as exc:
            raise translate(exc, "GetItem") from exc
        item = response.get("Item")
        return None if item is None else _run_row(item)

    async def open_studies(self, before: datetime) -> AsyncIterator[tuple[str, str, RunRow]]:
        """(tenant, study, run fields) of every study with work open since before ``before``: received and
        never run, or with a run in flight (the sparse index ``open-studies``)."""
        start: dict[str, Any] | None = None
        while True:
            page: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": OPEN_INDEX,
                "KeyConditionExpression": "open_shard = :open AND open_since < :before",
                "ExpressionAttributeValues": {":open": {"S": OPEN_SHARD}, ":before": {"S": before.isoformat()}},
            }
            if start is not None:
                page["ExclusiveStartKey"] = start
            try:
                response = await self._ddb.query(**page)
            except Exception as exc:
                raise translate(exc, "Query") from exc
            for item in response.get("Items", []):
                yield item["pk"]["S"], item["sk"]["S"], _run_row(item)
            start = response.get("LastEvaluatedKey")
            if not start:
                return

    @staticmethod
    def _key(tenant: str, study: str) -> dict[str, Any]:
        return {"pk": {"S": tenant}, "sk": {"S": study}}

    async def _update(self, what: str, **request: Any) -> None:
        try:
            await self._ddb.update_item(TableName=self.table, **request)
        except Exception as exc:
            raise translate(exc, what) from exc

    async def set_state(
        self,
        tenant: str,
        study: str,
        state: StudyState,
        *,
        stage: str | None = None,
        stage_ms: float | None = None,
        result_location: str | None = None,
        failure_reason: str | None = None,
        model: str | None = None,
    ) -> None:
        names = {"#s": "status"}
        values: dict[str, Any] = {":state": {"S": state.value}, ":now": {"S": utcnow().isoformat()}}
        sets = ["#s = :state", "updated_at = :now"]
        for field, value in (
            ("result_location", result_location),
            ("failure_reason", failure_reason),
            ("model", model),
        ):
            if value is not None:
                values[f":{field}"] = {"S": value}
                sets.append(f"{field} = :{field}")
        stage_times = {} if stage is None or stage_ms is None else {stage: {"N": f"{stage_ms:.3f}"}}
        timed = bool(stage_times)
        forms = (
            # The row exists (written by record_received, with its stage map): add to it.
            (
                "attribute_exists(pk)",
                [*sets, "stage_times_ms.#stage = :ms"] if timed else sets,
                {**names, "#stage": str(stage)} if timed else names,
                {**values, ":ms": stage_times[str(stage)]} if timed else values,
            ),
            # No row: a STOW request whose manifest started this execution had its `received` row removed by
            # another request's undo (that one failed while this one was still recording). It is created
            # here, unless one appeared meanwhile (then the first form applies).
            (
                "attribute_not_exists(pk)",
                [*sets, "created_at = if_not_exists(created_at, :now)", "stage_times_ms = :stages"],
                names,
                {**values, ":stages": {"M": stage_times}},
            ),
        )
        key = {"pk": {"S": tenant}, "sk": {"S": study}}
        while True:
            for condition, form_sets, form_names, form_values in forms:
                update = self._ddb.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET " + ", ".join(form_sets),
                    ConditionExpression=condition,
                    ExpressionAttributeNames=form_names,
                    ExpressionAttributeValues=form_values,
                )
                if await self._conditional("UpdateItem", update):
                    return

    async def _conditional(self, what: str, write: Awaitable[Any]) -> bool:
        """Await a conditional write: False when its condition did not hold; other errors translated."""
        try:
            await write
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise translate(exc, what) from exc
        return True

    async def reachable(self) -> bool:
        """Whether the table answers a read (of a key no study has: GetItem is all the gateway may do)."""
        try:
            await self._ddb.get_item(TableName=self.table, Key={"pk": {"S": "-"}, "sk": {"S": "readyz"}})
        except Exception:
            return False
        return True

    async def get(self, tenant: str, study: str, *, instances: int, series: int) -> StudyStatus | None:
        try:
            response = await self._ddb.get_item(
                TableName=self.table, Key={"pk": {"S": tenant}, "sk": {"S": study}}, ConsistentRead=True
            )
        except Exception as exc:
            raise translate(exc, "GetItem") from exc
        item = response.get("Item")
        if item is None:
            return None
        return StudyStatus(
            study_instance_uid=study,
            status=StudyState(item["status"]["S"]),
            instances=instances,
            series=series,
            created_at=datetime.fromisoformat(item["created_at"]["S"]),
            updated_at=datetime.fromisoformat(item["updated_at"]["S"]),
            stage_times_ms={k: float(v["N"]) for k, v in item.get("stage_times_ms", {}).get("M", {}).items()},
            result_location=item.get("result_location", {}).get("S"),
            failure_reason=item.get("failure_reason", {}).get("S"),
            model=item.get("model", {}).get("S"),
            run_id=item.get("run_id", item.get("last_run", {})).get("S"),
            runs=int(item.get("runs", {}).get("N", "0")),
            exports=[_export(name, value["M"]) for name, value in sorted(item.get("exports", {}).get("M", {}).items())],
        )

    # Exports: the row's ``exports`` map holds one entry per destination of the latest results, each
    # written only by its own destination's branch (a nested path), and only for the run it is about, so a
    # late attempt for an older run never overwrites the newer run's state.
    async def begin_exports(self, tenant: str, study: str, run_id: str, names: list[str], *, replace: bool) -> None:
        """Every destination in ``names`` pending for ``run_id``. ``replace``: the entries of other
        destinations go (the results of a new run); otherwise only these are reset (a re-export)."""
        entries = {name: {"M": _pending(run_id)} for name in names}
        if replace:
            await self._update(
                "UpdateItem",
                Key=self._key(tenant, study),
                UpdateExpression="SET exports = :entries",
                ExpressionAttributeValues={":entries": {"M": entries}},
            )
            return
        await self._update(  # the map exists for every study whose results were stored
            "UpdateItem",
            Key=self._key(tenant, study),
            UpdateExpression="SET exports = if_not_exists(exports, :none)",
            ExpressionAttributeValues={":none": {"M": {}}},
        )
        if not entries:
            return
        placeholders = {f"#n{i}": name for i, name in enumerate(entries)}
        await self._update(  # a second write: one expression may not name both a map and a path inside it
            "UpdateItem",
            Key=self._key(tenant, study),
            UpdateExpression="SET " + ", ".join(f"exports.{p} = :e{p[2:]}" for p in placeholders),
            ExpressionAttributeNames=placeholders,
            ExpressionAttributeValues={f":e{p[2:]}": entries[name] for p, name in placeholders.items()},
        )

    async def export_attempted(
        self, tenant: str, study: str, name: str, run_id: str, state: ExportState, error: str | None = None
    ) -> ExportStatus | None:
        """Count one attempt of ``name`` for ``run_id`` and what it came to (``sent``; ``pending`` with the
        error that will be retried; ``failed``), in one write; the first attempt's time is kept. The entry
        after it, or None when the entry is about another run now (the write is then not made)."""
        now = utcnow().isoformat()
        values: dict[str, Any] = {":one": {"N": "1"}, ":now": {"S": now}, ":run": {"S": run_id}}
        values[":state"] = {"S": state.value}
        update = (
            "SET exports.#n.attempts = exports.#n.attempts + :one, exports.#n.#s = :state, "
            "exports.#n.first_attempt_at = if_not_exists(exports.#n.first_attempt_at, :now)"
        )
        if error is not None:
            update += ", exports.#n.last_error = :error"
            values[":error"] = {"S": error[:500]}
        if state is ExportState.SENT:
            update += ", exports.#n.sent_at = :now"
        try:
            response = await self._ddb.update_item(
                TableName=self.table,
                Key=self._key(tenant, study),
                UpdateExpression=update,
                ConditionExpression="exports.#n.run_id = :run",
                ExpressionAttributeNames={"#n": name, "#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise translate(exc, "UpdateItem") from exc
        return _export(name, response["Attributes"]["exports"]["M"][name]["M"])

    async def export_failed(self, tenant: str, study: str, name: str, run_id: str, reason: str) -> bool:
        """Record ``name`` as failed for good for ``run_id``, with ``reason``, without counting an attempt
        (the branch's Catch). False when the entry is about another run now."""
        return await self._conditional(
            "UpdateItem",
            self._ddb.update_item(
                TableName=self.table,
                Key=self._key(tenant, study),
                UpdateExpression="SET exports.#n.#s = :state, exports.#n.last_error = :error",
                ConditionExpression="exports.#n.run_id = :run",
                ExpressionAttributeNames={"#n": name, "#s": "status"},
                ExpressionAttributeValues={
                    ":state": {"S": ExportState.FAILED.value},
                    ":error": {"S": reason[:500]},
                    ":run": {"S": run_id},
                },
            ),
        )


def _pending(run_id: str) -> dict[str, Any]:
    return {"status": {"S": ExportState.PENDING.value}, "attempts": {"N": "0"}, "run_id": {"S": run_id}}


def _export(name: str, entry: dict[str, Any]) -> ExportStatus:
    def text(key: str) -> str | None:
        value = entry.get(key, {}).get("S")
        return None if value is None else str(value)

    sent, first = text("sent_at"), text("first_attempt_at")
    return ExportStatus(
        destination=name,
        status=ExportState(entry["status"]["S"]),
        attempts=int(entry.get("attempts", {}).get("N", "0")),
        last_error=text("last_error"),
        sent_at=None if sent is None else datetime.fromisoformat(sent),
        run_id=text("run_id"),
        first_attempt_at=None if first is None else datetime.fromisoformat(first),
    )


def _run_row(item: dict[str, Any]) -> RunRow:
    def text(name: str) -> str | None:
        value = item.get(name, {}).get("S")
        return None if value is None else str(value)

    def when(name: str) -> datetime | None:
        value = text(name)
        return None if value is None else datetime.fromisoformat(value)

    return RunRow(
        run_id=text("run_id"),
        previous_run=text("previous_run"),
        last_run=text("last_run"),
        runs=int(item.get("runs", {}).get("N", "0")),
        full=bool(item.get("run_full", {}).get("BOOL", False)),
        started_at=when("run_started_at"),
        status=text("status"),
        open_since=when("open_since"),
    )
